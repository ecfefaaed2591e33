"""`vidmini probe` and the CLI contract, through the real entry point (in process; a child process only for what
must start from a fresh interpreter: what `--help` imports)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import corpus


def test_help_explains_and_imports_no_torch(cli):
    out = cli("--help")
    assert out.code == 0
    assert all(command in out.stdout for command in ("ask", "summarize", "probe"))
    code = ("import sys; from vidmini.cli import main; main(['ask', '--help']); main(['probe', '--help']); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert heavy.strip().endswith("[]")  # --help stays instant: the model stack is imported by commands only


def test_probe_json_lines_and_exit_codes(cli):
    good = corpus("h264_multistream_2v2a2s_torchcodec_nasa.mp4")
    bad = corpus("audio_only_2x_aac_no_video_mediabunny.mp4")
    out = cli("probe", "--json", good, bad, "/no/such/file.mp4")
    assert out.code == 3
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["ok"] for r in records] == [True, False, False]
    first = records[0]
    for key in ("path", "ok", "error", "container", "codec", "width", "height", "display_width", "display_height",
                "rotation", "duration_s", "fps", "frames", "sampled_frames", "decoder"):
        assert key in first
    assert (first["stream_index"], first["width"], first["sampled_frames"]) == (3, 480, 13)
    assert "no video stream (audio only)" in records[1]["error"]
    assert "no such file" in records[2]["error"]


def test_probe_table_and_success_exit(cli):
    out = cli("probe", corpus("h264_mov_rot90_3frames_decord.mov"))
    assert out.code == 0
    assert "320x568" in out.stdout and "rotated -90" in out.stdout and "Traceback" not in out.stderr


def test_usage_errors_exit_2(cli):
    assert cli("probe").code == 2
    fps = cli("probe", "--fps", "0", "x.mp4")
    assert fps.code == 2 and "--fps" in fps.stderr
    assert cli("frobnicate").code == 2


def test_probe_does_not_hang_on_close():
    """Regression: setting PyAV's log level made container.close() deadlock under frame threading (a child process,
    so a hang is cut by the timeout instead of freezing the suite)."""
    out = subprocess.run([sys.executable, "-m", "vidmini", "probe", str(corpus("h264_mov_rot90_3frames_decord.mov"))],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
