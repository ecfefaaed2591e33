"""`vidmini probe` and the CLI contract, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import corpus


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "vidmini", *args], capture_output=True, text=True, timeout=timeout)


def test_help_explains_and_imports_no_torch():
    out = run("--help")
    assert out.returncode == 0
    assert all(command in out.stdout for command in ("ask", "summarize", "probe"))
    code = ("import sys; from vidmini.cli import main; main(['ask', '--help']); main(['probe', '--help']); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert heavy.strip().endswith("[]")  # --help stays instant: the model stack is imported by commands only


def test_probe_json_lines_and_exit_codes():
    good = corpus("h264_multistream_2v2a2s_torchcodec_nasa.mp4")
    bad = corpus("audio_only_2x_aac_no_video_mediabunny.mp4")
    out = run("probe", "--json", str(good), str(bad), "/no/such/file.mp4")
    assert out.returncode == 3
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["ok"] for r in records] == [True, False, False]
    first = records[0]
    for key in ("path", "ok", "error", "container", "codec", "width", "height", "display_width", "display_height",
                "rotation", "duration_s", "fps", "frames", "sampled_frames", "decoder"):
        assert key in first
    assert (first["stream_index"], first["width"], first["sampled_frames"]) == (3, 480, 13)
    assert "no video stream (audio only)" in records[1]["error"]
    assert "no such file" in records[2]["error"]


def test_probe_table_and_success_exit():
    out = run("probe", str(corpus("h264_mov_rot90_3frames_decord.mov")))
    assert out.returncode == 0
    assert "320x568" in out.stdout and "rotated -90" in out.stdout and "Traceback" not in out.stderr


def test_usage_errors_exit_2():
    assert run("probe").returncode == 2
    assert run("probe", "--fps", "0", "x.mp4").returncode == 2
    assert run("frobnicate").returncode == 2


def test_probe_does_not_hang_on_close():
    """Regression: setting PyAV's log level made container.close() deadlock under frame threading."""
    out = run("probe", str(corpus("h264_mov_rot90_3frames_decord.mov")), timeout=30)
    assert out.returncode == 0
