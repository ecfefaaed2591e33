"""The synthetic world and its questions: deterministic, unambiguous, events long enough, answers checkable."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vidmini.demo.clips import needle_video, sequence_clip, still_clip
from vidmini.demo.questions import QA, SINGLE_EVENT, TEMPORAL, ask, is_correct, mmss, needle_question
from vidmini.demo.render import render
from vidmini.demo.timeline import MIN_EVENT_S
from vidmini.demo.world import COLOURS, DIGITS, SHAPES, WORDS


def test_world_holds_what_the_issue_asks_for():
    assert set(COLOURS) == {"red", "orange", "yellow", "green", "blue", "purple", "white", "black"}
    assert set(SHAPES) == {"circle", "square", "triangle", "star"}
    assert DIGITS == [str(d) for d in range(10)]
    assert all(3 <= len(w) <= 8 and w.isupper() for w in WORDS) and len(set(WORDS)) == len(WORDS)


@pytest.mark.parametrize("seed", range(20))
def test_events_last_at_least_three_seconds(seed):
    rng = random.Random(seed)
    for tl in (still_clip(rng, 4.0), sequence_clip(rng, 30.0), needle_video(rng, 600.0, rng.uniform(0, 600))):
        assert tl.events and all(e.end - e.start >= MIN_EVENT_S - 1e-9 for e in tl.events)
        assert all(0 <= e.start < e.end <= tl.duration for e in tl.events)


def test_rendering_is_deterministic_and_shows_the_item():
    tl = still_clip(random.Random(3), 4.0, 1)
    a, b = render(tl, 1.0, 200, 120), render(tl, 1.0, 200, 120)
    assert a.shape == (120, 200, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    empty = still_clip(random.Random(3), 4.0, 1)
    empty.events.clear()
    assert not np.array_equal(render(empty, 1.0, 200, 120), a)  # the item changed pixels


@pytest.mark.parametrize("seed", range(30))
def test_questions_are_unambiguous(seed):
    rng = random.Random(seed)
    tl = still_clip(rng, 5.0)
    qa = ask(tl, rng, SINGLE_EVENT)
    assert qa is not None and qa.kind in SINGLE_EVENT and qa.check(qa.answer)
    shown = {e.item.colour for e in tl.events} | {e.item.value.lower() for e in tl.events}
    assert qa.answer.lower() in shown
    seq = sequence_clip(rng, 30.0)
    qa = ask(seq, rng, TEMPORAL)
    if qa is not None:
        assert qa.check(qa.answer)


def test_first_last_and_when_follow_the_timeline():
    rng = random.Random(7)
    for _ in range(20):
        tl = sequence_clip(rng, 40.0, ["digit"])
        for kind in ("first", "when"):
            qa = ask(tl, rng, [kind])
            if qa is None:
                continue
            if kind == "first":
                assert qa.answer == min(tl.events, key=lambda e: e.start).item.value
            else:
                value = qa.question.split("digit ")[1].split()[0]
                starts = [e.start for e in tl.events if e.item.value == value]
                assert len(starts) == 1 and qa.answer == mmss(starts[0])


def test_needle_question_names_the_one_item():
    tl = needle_video(random.Random(1), 3600.0, 1800.0)
    qa = needle_question(tl, random.Random(1))
    item = tl.events[0].item
    assert len(tl.events) == 1 and qa.answer == (item.colour if item.kind == "shape" else item.value)


@pytest.mark.parametrize("expected,kind,answer,right", [
    ("blue", "colour_of_shape", "Blue.", True),
    ("blue", "colour_of_shape", "blue or red", False),
    ("blue", "colour_of_shape", "It is red.", False),
    ("7", "which_digit", "seven", True),
    ("7", "which_digit", "17", False),
    ("HOUSE", "which_word", "The word is HOUSE.", True),
    ("star", "which_shape", "stars", True),
    ("1:05", "when", "at 1:06", True),
    ("1:05", "when", "65 seconds", True),
    ("1:05", "when", "0:55", False),
    ("1:05", "when", "I don't know", False),
])
def test_answers_are_checked_strictly(expected, kind, answer, right):
    assert is_correct(QA("q", expected, kind, tolerance_s=2.0), answer) is right
