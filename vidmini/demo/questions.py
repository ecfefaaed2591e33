"""Questions with checkable answers about a Timeline.

Every question is asked only when its answer is unambiguous for that timeline. Types:
  single-event (what is on screen): colour_of_shape, shape_of_colour, which_shape, which_digit, which_word,
                                    colour_of_text
  temporal: first, last, count, when
Answers are short: a colour, a shape, a digit, a word in capitals, a count, or a time as m:ss.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from vidmini.demo.timeline import Event, Timeline
from vidmini.demo.world import COLOUR_NAMES, DIGITS, SHAPES, WORDS

SINGLE_EVENT = ["colour_of_shape", "shape_of_colour", "which_shape", "which_digit", "which_word", "colour_of_text"]
TEMPORAL = ["first", "last", "count", "when"]
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # the canonical answer, the training target
    kind: str  # one of SINGLE_EVENT + TEMPORAL
    tolerance_s: float = 0.0  # for "when": an answer within this many seconds is right

    def check(self, text: str) -> bool:
        return is_correct(self, text)


def mmss(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def parse_seconds(text: str) -> float | None:
    """'1:05', '0:05', '65 s', '65 seconds' -> seconds."""
    m = re.search(r"(\d+):(\d{2})(?::(\d{2}))?", text)
    if m:
        parts = [int(p) for p in m.groups() if p is not None]
        return float(parts[0] * 60 + parts[1]) if len(parts) == 2 else float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    m = re.search(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", text)
    return float(m.group(1)) if m else None


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def is_correct(qa: QA, text: str) -> bool:
    """The answer names the expected value and no other value of the same vocabulary."""
    if qa.kind == "when":
        got = parse_seconds(text)
        return got is not None and abs(got - parse_seconds(qa.answer)) <= qa.tolerance_s
    said = [NUMBER_WORDS.get(w, w) for w in words_of(text)]
    expected = qa.answer.lower()
    vocab = {w.lower() for w in COLOUR_NAMES + SHAPES + DIGITS + WORDS} | {str(n) for n in range(11, 100)}
    named = {w for w in said if w in vocab or w.rstrip("s") in vocab}
    named = {w if w in vocab else w.rstrip("s") for w in named}
    return expected in named and len(named) == 1


# ---- question makers: each returns a QA or None when the timeline does not make the answer unambiguous --------

def _items(tl: Timeline, kind: str) -> list[Event]:
    return [e for e in tl.events if e.item.kind == kind]


def colour_of_shape(tl: Timeline, rng: random.Random) -> QA | None:
    shapes = {e.item.value for e in _items(tl, "shape")}
    options = [s for s in shapes if len({e.item.colour for e in _items(tl, "shape") if e.item.value == s}) == 1]
    if not options:
        return None
    shape = rng.choice(sorted(options))
    colour = next(e.item.colour for e in _items(tl, "shape") if e.item.value == shape)
    q = rng.choice([f"What colour is the {shape}?", f"What color is the {shape}?", f"Which colour is the {shape}?"])
    return QA(q, colour, "colour_of_shape")


def shape_of_colour(tl: Timeline, rng: random.Random) -> QA | None:
    by_colour: dict[str, set[str]] = {}
    for e in _items(tl, "shape"):
        by_colour.setdefault(e.item.colour, set()).add(e.item.value)
    options = [c for c, s in by_colour.items() if len(s) == 1]
    if not options:
        return None
    colour = rng.choice(sorted(options))
    q = rng.choice([f"What shape is {colour}?", f"Which shape is {colour}?", f"What is the {colour} shape?"])
    return QA(q, next(iter(by_colour[colour])), "shape_of_colour")


def _the_one(tl: Timeline, rng: random.Random, kind: str, phrasings: list[str], label: str) -> QA | None:
    """The one value of `kind` the clip shows, asked in one of `phrasings`; None when it shows none or several."""
    values = {e.item.value for e in _items(tl, kind)}
    if len(values) != 1:
        return None
    return QA(rng.choice(phrasings), values.pop(), label)


def which_shape(tl: Timeline, rng: random.Random) -> QA | None:
    return _the_one(tl, rng, "shape", ["What shape is shown?", "Which shape appears?",
                                        "What shape appears in the video?"], "which_shape")


def which_digit(tl: Timeline, rng: random.Random) -> QA | None:
    return _the_one(tl, rng, "digit", ["What digit is shown?", "Which number appears?",
                                        "What number is on the screen?"], "which_digit")


def which_word(tl: Timeline, rng: random.Random) -> QA | None:
    return _the_one(tl, rng, "word", ["What word is shown?", "Which word appears?",
                                       "What word is written on the screen?"], "which_word")


def colour_of_text(tl: Timeline, rng: random.Random) -> QA | None:
    kind = rng.choice(["digit", "word"])
    events = _items(tl, kind)
    if len({e.item.value for e in events}) != 1 or len({e.item.colour for e in events}) != 1:
        return None
    q = rng.choice([f"What colour is the {kind}?", f"What color is the {kind} {events[0].item.value}?"])
    return QA(q, events[0].item.colour, "colour_of_text")


def _order(tl: Timeline, kind: str) -> list[Event]:
    return sorted(_items(tl, kind), key=lambda e: e.start)


def _label(e: Event) -> str:
    return e.item.colour if e.item.kind == "shape" else e.item.value


def first_or_last(tl: Timeline, rng: random.Random, which: str) -> QA | None:
    kind = next((k for k in ["shape", "digit", "word"] if _items(tl, k)), None)
    events = _order(tl, kind) if kind else []
    labels = {_label(e) for e in events}
    if len(labels) < 2:
        return None
    e = events[0] if which == "first" else max(events, key=lambda ev: ev.end)
    noun = {"shape": "colour of shape", "digit": "digit", "word": "word"}[kind]
    if kind == "shape":
        q = f"What colour is the {which} shape shown?"
    else:
        q = rng.choice([f"Which {noun} appears {which}?", f"What is the {which} {noun} shown?"])
    return QA(q, _label(e), which)


def _key(e: Event) -> tuple:
    """What a question names: a shape by colour and kind, a digit or word by its value alone."""
    return (e.item.kind, e.item.value, e.item.colour if e.item.kind == "shape" else "")


def count(tl: Timeline, rng: random.Random) -> QA | None:
    counts = Counter(_key(e) for e in tl.events)
    if not counts:
        return None
    key = rng.choice(sorted(counts))
    n = counts[key]
    kind, value, colour = key
    if kind == "shape":
        q = f"How many times does a {colour} {value} appear?"
    else:
        q = f"How many times does the {kind} {value} appear?"
    return QA(q, str(n), "count")


def when(tl: Timeline, rng: random.Random) -> QA | None:
    counts = Counter(_key(e) for e in tl.events)
    once = [k for k, n in counts.items() if n == 1]
    if not once:
        return None
    key = rng.choice(sorted(once))
    event = next(e for e in tl.events if _key(e) == key)
    item = event.item
    what = f"the {item.colour} {item.value}" if item.kind == "shape" else f"the {item.kind} {item.value}"
    q = f"When does {what} first appear? Answer in m:ss."
    return QA(q, mmss(event.start), "when", tolerance_s=2.0)


MAKERS = {
    "colour_of_shape": colour_of_shape, "shape_of_colour": shape_of_colour, "which_shape": which_shape,
    "which_digit": which_digit, "which_word": which_word, "colour_of_text": colour_of_text,
    "first": lambda tl, rng: first_or_last(tl, rng, "first"), "last": lambda tl, rng: first_or_last(tl, rng, "last"),
    "count": count, "when": when,
}


def ask(tl: Timeline, rng: random.Random, kinds: list[str] | None = None) -> QA | None:
    """One question of a random kind (among `kinds`) that this timeline answers unambiguously, or None."""
    kinds = list(kinds or MAKERS)
    rng.shuffle(kinds)
    for kind in kinds:
        qa = MAKERS[kind](tl, rng)
        if qa is not None:
            return qa
    return None


def needle_question(tl: Timeline, rng: random.Random) -> QA:
    """The question a needle video is asked: what its one item is (the shape's colour for a shape)."""
    item = tl.events[0].item
    if item.kind == "shape":
        return QA(f"What colour is the {item.value}?", item.colour, "colour_of_shape")
    maker = which_digit if item.kind == "digit" else which_word
    return maker(tl, rng)
