"""Hostile inputs and options (issue 11, "Inputs and options"), through the real entry point."""

from __future__ import annotations

import io
import json
import sys
import warnings

import pytest

from conftest import REPO, corpus

SAMPLE = str(REPO / "sample_videos" / "scenes.mp4")  # 40 s at 10 fps


def test_a_question_that_is_not_utf8_is_refused(tiny_checkpoint, cli, monkeypatch):
    argv = cli("ask", "--model", tiny_checkpoint, SAMPLE, "caf\udce9?")  # how Python passes bytes that are not UTF-8
    assert argv.code == 2 and "question 1 is not valid UTF-8" in argv.stderr
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"what?\ncaf\xe9?\n")))
    piped = cli("ask", "--model", tiny_checkpoint, SAMPLE)
    assert piped.code == 2 and "standard input is not valid UTF-8" in piped.stderr and "Traceback" not in piped.stderr


@pytest.mark.parametrize("question", ["", "   ", "\t\n"])
def test_a_blank_question_is_refused(tiny_checkpoint, cli, question):
    out = cli("ask", "--model", tiny_checkpoint, SAMPLE, "What?", question)
    assert out.code == 2 and "question 2 is empty" in out.stderr


def test_a_long_question_is_capped_and_its_cost_stated_first(tiny_checkpoint, cli):
    long = "Describe every colour you see and when it appears " * 12  # ~320 tokens with the tiny tokenizer
    refused = cli("ask", "--model", tiny_checkpoint, "--max-question-tokens", "100", SAMPLE, long)
    assert refused.code == 2 and "over --max-question-tokens 100" in refused.stderr
    answered = cli("ask", "--model", tiny_checkpoint, "--max-new-tokens", "2", "--max-frames", "4", SAMPLE, long)
    assert answered.code == 0, answered.stderr
    cost = next(line for line in answered.stderr.splitlines() if "token-frames" in line)
    assert "each of 4 frames" in cost
    assert answered.stderr.index("token-frames") < answered.stderr.index("% (")  # stated before the work


def test_progress_is_logged_when_stderr_is_not_a_terminal(tiny_checkpoint, cli):
    out = cli("ask", "--model", tiny_checkpoint, "--max-new-tokens", "2", SAMPLE, "What?")
    lines = [line for line in out.stderr.splitlines() if "% (" in line]
    assert [line.split(": ")[-1].split("%")[0] for line in lines] == ["20", "40", "60", "80", "100"]  # batches of 8
    assert lines[-1].split(": ")[-1].startswith("100% (40/40 frames")
    assert cli("ask", "--model", tiny_checkpoint, "--quiet", "--max-new-tokens", "2", SAMPLE, "What?").stderr == ""


def test_fps_above_the_stream_rate_is_capped_and_said(tiny_checkpoint, cli):
    out = cli("ask", "--json", "--quiet", "--model", tiny_checkpoint, "--max-new-tokens", "2", "--fps", "1000",
              SAMPLE, "What?")
    assert out.code == 0, out.stderr
    assert out.json["frames_used"] == 400  # 40 s at the clip's own 10 fps, not 40,000 copies
    assert any("--fps 1000 is above the video's own 10 frames per second" in n for n in out.json["notes"])
    probe = cli("probe", "--json", "--fps", "1000", SAMPLE)
    assert probe.json["sampled_frames"] == 400


def test_dry_run_fetches_the_config_only(tiny_checkpoint, cli, monkeypatch, tmp_path):
    import shutil

    import huggingface_hub

    config_only = tmp_path / "snapshot"
    shutil.copytree(tiny_checkpoint, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    asked = []

    def snapshot_download(repo_id, allow_patterns=None, **_):
        asked.append(allow_patterns)
        return str(config_only)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = cli("ask", "--dry-run", "--json", "--model", "someone/some-llava-mini", SAMPLE, "What?")
    assert out.code == 0, out.stderr
    assert asked and not any("safetensors" in p for p in asked[0])
    assert out.json["frames"] == 40 and out.json["weights_bytes"] > 0


def test_the_video_is_checked_before_the_model_is_loaded(cli, tmp_path):
    out = cli("ask", "--model", tmp_path / "no-model-here", "/no/such.mp4", "What?")
    assert out.code == 3 and "no such file" in out.stderr  # not 4: the model was never touched
    folder = cli("ask", "--model", tmp_path / "no-model-here", tmp_path, "What?")
    assert folder.code == 3 and "is a folder" in folder.stderr
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert cli("ask", "--model", tmp_path / "no-model-here", text, "What?").code == 3


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:x", "gpu0"])
def test_an_unknown_device_is_a_usage_error(tiny_checkpoint, cli, device):
    out = cli("ask", "--device", device, "--model", tiny_checkpoint, SAMPLE, "What?")
    assert out.code == 2 and "use auto, cpu, cuda or cuda:N" in out.stderr


def test_probe_gives_every_file_its_line(cli, monkeypatch, tmp_path):
    import vidmini.sources

    real = vidmini.sources.probe
    locked = str(tmp_path / "locked.mp4")

    def probe(path):
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(vidmini.sources, "probe", probe)
    out = cli("probe", "--json", SAMPLE, locked, tmp_path, SAMPLE)
    assert out.code == 3
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["ok"] for r in records] == [True, False, False, True]
    assert "Permission denied" in records[1]["error"] and "is a folder" in records[2]["error"]


def test_images_warn_nothing_and_animated_ones_say_which_frame(tiny_checkpoint, cli, tmp_path):
    from PIL import Image

    still = tmp_path / "still.png"
    Image.new("RGB", (250, 150), (200, 30, 30)).save(still)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "NumPy array is not writable" warning used to come from torch
        out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "2", still, "What colour?")
    assert out.code == 0, out.stderr
    assert out.json["notes"] == []
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=500)
    out = cli("ask", "--json", "--model", tiny_checkpoint, "--max-new-tokens", "2", gif, "What colour?")
    assert out.code == 0, out.stderr
    assert any("animated image of 3 frames" in n and "first frame only" in n for n in out.json["notes"])


@pytest.mark.parametrize("args,code", [
    (["ask", "--json", "--model", "MODEL", "/no/such.mp4", "What?"], 3),
    (["ask", "--json", "--device", "tpu", "--model", "MODEL", SAMPLE, "What?"], 2),
    (["ask", "--json", "--model", "/no/model/here", SAMPLE, "What?"], 4),
])
def test_json_failures_are_one_object_on_stdout(tiny_checkpoint, cli, args, code):
    out = cli(*[str(tiny_checkpoint) if a == "MODEL" else a for a in args])
    assert out.code == code
    assert json.loads(out.stdout) == {"error": json.loads(out.stdout)["error"], "exit_code": code}
    assert len(out.stdout.splitlines()) == 1 and out.stderr.strip()  # the one line on stderr stays


def test_corrupt_reference_video_fails_cleanly_with_json(tiny_checkpoint, cli):
    out = cli("ask", "--json", "--model", tiny_checkpoint, corpus("audio_only_2x_aac_no_video_mediabunny.mp4"), "Q?")
    assert out.code == 3 and out.json["exit_code"] == 3 and "no video stream" in out.json["error"]
