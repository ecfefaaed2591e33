"""Three hours of video through `vidmini ask` on this machine: every frame used, CPU memory flat in the length."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vidmini.testing.videos import make_video

PEAK = """
import json, resource, sys
from vidmini.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
"""


def ask_peak(env, *args):
    out = subprocess.run([sys.executable, "-c", PEAK, "ask", *args], capture_output=True, text=True, env=env,
                         timeout=900)
    stats = json.loads(out.stderr.strip().splitlines()[-1])
    assert stats["code"] == 0, out.stderr
    return json.loads(out.stdout), stats["peak_rss_kb"] / 1024


@pytest.mark.slow
def test_three_hours_use_every_frame_in_flat_cpu_memory(tiny_checkpoint, three_hour_video, tmp_path):
    env = dict(os.environ, VIDMINI_CACHE_DIR=str(tmp_path / "cache"))
    two_minutes = make_video(str(tmp_path / "2min.mp4"), 120, fps=1.0)  # the baseline: one process, one model load
    args = ["--json", "--no-cache", "--quiet", "--model", str(tiny_checkpoint), "--batch-size", "32",
            "--max-new-tokens", "4"]
    short, short_peak = ask_peak(env, *args, two_minutes, "What happens?")
    long, long_peak = ask_peak(env, *args, str(three_hour_video), "What happens?")
    assert short["frames_used"] == 120
    assert long["frames_used"] == 10800 and long["duration_s"] == 10800
    assert long_peak - short_peak < 100, (short_peak, long_peak)
