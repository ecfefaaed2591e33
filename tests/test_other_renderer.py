"""bench/other_renderer.py's own pieces: its scoring and its clips, since its figures go into the model card."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import other_renderer  # noqa: E402


@pytest.mark.parametrize("answer,expected,right", [
    ("yellow", "yellow", True), ("It is yellow.", "yellow", True), ("yellow and red", "yellow", False),
    ("Two", "2", True), ("12", "2", False), ("KITCHEN", "kitchen", True), ("CHOCOLATE", "cup", False),
    ("", "circle", False), ("a circle, not a square", "circle", False),
])
def test_an_answer_is_right_when_it_names_the_expected_value_alone(answer, expected, right):
    assert other_renderer.right(answer, expected) is right


def test_a_still_clip_is_a_video_of_its_size_and_rate_showing_its_item(tmp_path):
    from vidmini.inputs.video import probe

    rng = random.Random(3)
    questions, info = other_renderer.still(rng, str(tmp_path / "still.mp4"))
    found = probe(str(tmp_path / "still.mp4"))
    assert (found.width, found.height) == tuple(info["size"])
    assert abs(found.fps - info["fps"]) < 0.01
    assert [kind for kind, _, _ in questions][0] in ("colour_of_shape", "which_digit", "which_word")
    assert all(expected for _, _, expected in questions)
