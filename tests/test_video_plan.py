"""Sampling plans: the reference's frame indices exactly, and presentation-time plans."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from vidmini.errors import UsageError
from vidmini.inputs.video.plan import make_plan, plan_time, reference_indices, segment_indices
from vidmini.inputs.video.probe import VideoError, VideoInfo


def info(duration, frames=None, fps=None, start=0.0):
    return VideoInfo(path="x.mp4", container="mp4", stream_index=0, codec="h264", width=64, height=48, rotation=0,
                     start_s=start, duration_s=duration, duration_source="container", frames=frames, fps=fps)


def test_reference_indices_match_the_reference_table():
    path = FIXTURES / "preprocessing" / "frame_sampling.json"
    if not path.exists():
        pytest.skip("fixtures not present")
    for case in json.loads(path.read_text()):
        if "avg_fps" in case:
            got = reference_indices(case["total_frames"], case["avg_fps"])
        else:  # cases of the segment rule alone
            got = segment_indices(case["total_frames"], case["num_frames"])
        assert got.tolist() == case["indices"], case
        assert len(got) == case["num_frames"]


def test_time_plan_is_the_middle_of_each_second():
    plan = plan_time(info(10.0))
    assert plan.times_s.tolist() == [i + 0.5 for i in range(10)]


def test_short_video_gets_one_frame_from_its_middle():
    """Regression: a 0.1 s clip used to be sampled at 0.5 s, past its end (so its last frame was shown)."""
    plan = plan_time(info(0.1))
    assert len(plan) == 1 and plan.times_s[0] == pytest.approx(0.05)


def test_max_frames_spreads_over_the_whole_video():
    plan = plan_time(info(3600.0), max_frames=100)
    assert len(plan) == 100
    assert plan.times_s[0] == pytest.approx(18.0) and plan.times_s[-1] == pytest.approx(3600 - 18.0)


def test_range_and_fps():
    plan = plan_time(info(100.0), fps=2.0, start=10, end=20)
    assert len(plan) == 20 and plan.times_s[0] == pytest.approx(10.25) and plan.times_s[-1] == pytest.approx(19.75)
    with pytest.raises(UsageError, match="holds no video"):  # only --start/--end empty a range: exit 2
        plan_time(info(5.0), start=6)


def test_reference_mode_needs_counts_and_refuses_sub_second_video():
    assert make_plan(info(10.0, frames=300, fps=30.0), "reference").indices.tolist() == [
        15, 45, 75, 105, 135, 164, 194, 224, 254, 284]
    with pytest.raises(VideoError, match="shorter than 1 s"):
        make_plan(info(0.5, frames=15, fps=30.0), "reference")
    with pytest.raises(VideoError, match="needs a frame count"):
        make_plan(info(10.0), "reference")


def test_plan_key_is_stable_across_processes():
    import subprocess
    import sys

    code = ("from vidmini.inputs.video.probe import VideoInfo; from vidmini.inputs.video.plan import plan_time; "
            "print(plan_time(VideoInfo('x.mp4', 'mp4', 0, 'h264', 64, 48, 0, 0.0, 10.0, 'container', None, None)).key())")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(keys) == 1 and plan_time(info(10.0)).key() + "\n" in keys


def test_reference_plan_past_the_last_frame_says_from_when_in_seconds(tmp_path):
    """A reference-mode plan naming frames the file does not have: the warning's "from N s on" is the first
    missing frame's time (its index over the frame rate), not its position in the plan."""
    import numpy as np

    from vidmini.testing.videos import make_video
    from vidmini.inputs.video import StreamOptions, decode_all, probe
    from vidmini.inputs.video.plan import SamplingPlan

    info = probe(make_video(str(tmp_path / "ten.mp4"), 10.0, fps=2.0))  # 20 frames, 0.5 s apart
    plan = SamplingPlan("reference", None, np.array([0, 4, 30, 40]), 1.0)
    frames, stream = decode_all(info, plan, StreamOptions(decoder="pyav"))
    assert len(frames) == 2 and stream.report.missing == 2
    assert stream.report.first_missing_s == 15.0  # frame 30 at 2 fps; the plan position (2) would say 2.0
    assert any("from 15.0 s on" in w for w in stream.report.warnings())
