"""vidmini used as a hostile new user would: wrong paths, files that are not ours, two runs at once, a broken or
full cache, SIGTERM and SIGKILL. Each case runs the real entry point (`vidmini.cli.main` in this process; a
subprocess only where a signal needs one) and states the behaviour it guards.

Add a case: a function `test_<what>` using `cli(...)` (returns exit code, stdout, stderr) and the fixtures below.
Keep cases fast: 2-4 s clips, --max-frames 2-4, --max-new-tokens 2.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

SAMPLE = str(REPO / "sample_videos" / "scenes.mp4")
FAST = ["--max-frames", "2", "--max-new-tokens", "2", "--quiet"]


# ---- helpers ---------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every case gets its own frame cache, no network, and a fresh set of once-only warnings."""
    from vidmini import cache

    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VIDMINI_CACHE_MAX_GB", raising=False)
    if hasattr(cache, "reset_warnings"):
        cache.reset_warnings()


@pytest.fixture
def cli(capsys):
    """Run `vidmini ARGS...` in this process: (exit code, stdout, stderr)."""
    from vidmini.cli import main

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of two 3-second videos."""
    from vidmini.testing.videos import make_video

    root = tmp_path_factory.mktemp("clips")
    for name in ("a.mp4", "b.mp4"):
        make_video(str(root / name), 3, fps=2.0)
    return root


@pytest.fixture
def folder(clips, tmp_path) -> Path:
    """A private copy of `clips`, for cases that change it."""
    return Path(shutil.copytree(clips, tmp_path / "videos"))


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A folder this process cannot write in. chmod does not stop root, so as root use a read-only mount."""
    if os.geteuid() != 0:
        path = tmp_path / "readonly"
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    for candidate in ("/sys", "/proc/self"):
        try:
            open(os.path.join(candidate, ".vidmini-probe"), "w").close()
        except OSError:
            yield Path(candidate)
            return
    pytest.skip("no read-only folder available")


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summarize_args(tiny_checkpoint, *paths, out, extra=()) -> list:
    return ["summarize", *paths, "--out", out, "--model", tiny_checkpoint, *FAST, *extra]


def ask_args(tiny_checkpoint, video=SAMPLE, *extra) -> list:
    return ["ask", video, "What is it?", "--model", tiny_checkpoint, "--json", *FAST, *extra]


def cache_dir() -> Path:
    return Path(os.environ["VIDMINI_CACHE_DIR"])


def cache_listing() -> list[str]:
    return sorted(os.listdir(cache_dir())) if cache_dir().is_dir() else []


# ---- summarize: a file that is not ours is never overwritten --------------------------------------------------
@pytest.mark.parametrize("given", ["typo", "real"])
def test_out_that_is_not_a_report_is_never_overwritten(cli, tiny_checkpoint, folder, tmp_path, given):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    source = "/nonexistent/videos" if given == "typo" else folder
    code, _, err = cli(*summarize_args(tiny_checkpoint, source, out=notes, extra=["--force"]))
    assert code == 2 and "not a vidmini report" in one_line(err)
    assert notes.read_text() == "my notes\n"


def test_a_report_is_recognised_by_its_records_not_its_extension(cli, tiny_checkpoint, folder, tmp_path):
    foreign = tmp_path / "data.jsonl"
    foreign.write_text('{"id": 1, "text": "a JSON Lines file of somebody else"}\n')
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=foreign))
    assert code == 2 and "not a vidmini report" in err
    assert foreign.read_text().startswith('{"id": 1')
    ours = tmp_path / "report.txt"  # an odd extension, but our records
    assert cli(*summarize_args(tiny_checkpoint, folder, out=ours))[0] == 0
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=ours))
    assert code == 0 and len(records(ours)) == 2


def test_markdown_that_is_not_ours_is_never_overwritten(cli, tiny_checkpoint, folder, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# My project\n")
    out = tmp_path / "r.jsonl"
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=out, extra=["--markdown", readme]))
    assert code == 2 and "not written by vidmini" in one_line(err) and not out.exists()
    assert readme.read_text() == "# My project\n"
    md = tmp_path / "r.md"  # ours: rendered on every run, so it must be recognisable as ours
    assert cli(*summarize_args(tiny_checkpoint, folder, out=out, extra=["--markdown", md]))[0] == 0
    assert cli("summarize", "--out", out, "--markdown", md)[0] == 0
    code, _, err = cli("summarize", "--out", out, "--markdown", readme)  # render-only mode checks too
    assert code == 2 and readme.read_text() == "# My project\n"


@pytest.mark.parametrize("existing", [False, True])
def test_out_and_markdown_the_same_file_is_refused(cli, tiny_checkpoint, folder, tmp_path, existing):
    same = tmp_path / "r.jsonl"
    if existing:
        assert cli(*summarize_args(tiny_checkpoint, folder, out=same))[0] == 0
    before = same.read_bytes() if existing else None
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=same, extra=["--markdown", same]))
    assert code == 2 and "same file" in one_line(err)
    assert (same.read_bytes() if same.exists() else None) == before


# ---- summarize: one writer, one record per file ---------------------------------------------------------------
def test_second_summarize_on_the_same_report_is_refused(cli, tiny_checkpoint, folder, tmp_path):
    out = tmp_path / "r.jsonl"
    first = subprocess.Popen([sys.executable, "-m", "vidmini", *map(str, summarize_args(tiny_checkpoint, folder, out=out))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".r.jsonl.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second started"
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=out))
    assert code == 2 and f"pid {first.pid}" in one_line(err)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert sorted(Path(r["path"]).name for r in records(out)) == ["a.mp4", "b.mp4"]
    assert not lock.exists()  # removed by its holder


def test_writer_rechecks_the_report_before_each_append(cli, tiny_checkpoint, folder, tmp_path, monkeypatch):
    """A writer that ignored the lock (a filesystem without locks) appended the same record meanwhile."""
    import vidmini.summarize

    out = tmp_path / "r.jsonl"
    real = vidmini.summarize.summarize_file

    def and_another_writer_too(*args, **kwargs):
        record = real(*args, **kwargs)
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    monkeypatch.setattr(vidmini.summarize, "summarize_file", and_another_writer_too)
    assert cli(*summarize_args(tiny_checkpoint, folder, out=out))[0] == 0
    assert sorted(Path(r["path"]).name for r in records(out)) == ["a.mp4", "b.mp4"]


def test_another_working_directory_adds_no_second_record(cli, tiny_checkpoint, folder, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(folder)
    assert cli(*summarize_args(tiny_checkpoint, ".", out=out))[0] == 0
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*summarize_args(tiny_checkpoint, "videos", str(folder / "a.mp4"), out="r.jsonl"))
    assert code == 0 and "nothing new" in err
    got = records(out)
    assert len(got) == 2 and {r["path"] for r in got} == {str(folder.resolve() / "a.mp4"), str(folder.resolve() / "b.mp4")}


def test_records_with_relative_paths_from_an_older_version_are_matched(cli, tiny_checkpoint, folder, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    assert cli(*summarize_args(tiny_checkpoint, folder, out=out))[0] == 0
    old = [{**r, "path": os.path.join("videos", Path(r["path"]).name)} for r in records(out)]  # as older versions wrote
    out.write_text("".join(json.dumps(r) + "\n" for r in old + old[:1]))  # with the duplicate that bug made
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=out))
    assert code == 0 and "nothing new" in err
    assert sorted(r["path"] for r in records(out)) == [str(folder.resolve() / "a.mp4"), str(folder.resolve() / "b.mp4")]


# ---- every output path is checked before any work -------------------------------------------------------------
BOGUS_MODEL = "/nonexistent/model"  # loading it would exit 4: exit 2 proves nothing was loaded


@pytest.mark.parametrize("case", ["missing folder", "a folder", "read-only folder", "markdown missing folder"])
def test_summarize_output_paths_are_checked_before_any_work(cli, clips, tmp_path, case, request):
    out, extra = {
        "missing folder": (tmp_path / "no" / "r.jsonl", []),
        "a folder": (tmp_path, []),
        "read-only folder": (None, []),
        "markdown missing folder": (tmp_path / "r.jsonl", ["--markdown", tmp_path / "no" / "r.md"]),
    }[case]
    if out is None:
        out = request.getfixturevalue("readonly_dir") / "r.jsonl"
    code, _, err = cli("summarize", clips, "--out", out, "--model", BOGUS_MODEL, "--quiet", *extra)
    assert code == 2, err
    assert one_line(err).startswith("vidmini: error: --")


@pytest.mark.parametrize("option", ["--memory-plot", "--memory-snapshot"])
def test_ask_output_paths_are_checked_before_any_work(cli, tmp_path, option):
    code, _, err = cli("ask", SAMPLE, "What?", "--model", BOGUS_MODEL, option, tmp_path / "no" / "m.png")
    assert code == 2 and f"{option} " in one_line(err) and "does not exist" in err


# ---- empty folders and reruns ---------------------------------------------------------------------------------
def test_empty_folder_says_no_videos_found(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a video")
    out = tmp_path / "r.jsonl"
    code, _, err = cli("summarize", empty, "--out", out, "--model", BOGUS_MODEL, "--quiet")
    assert code == 3 and f"no videos found under {empty}" in one_line(err)
    assert not out.exists()


def test_rerun_with_nothing_new_exits_by_this_run(cli, tiny_checkpoint, folder, tmp_path):
    (folder / "broken.mp4").write_bytes(b"\x00" * 4096)  # fails: recorded with its reason
    out = tmp_path / "r.jsonl"
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=out))
    assert code == 3 and "1 failed" in err
    code, _, err = cli(*summarize_args(tiny_checkpoint, folder, out=out))
    line = one_line(err)
    assert code == 0 and "nothing new" in line and "3 file(s) already" in line and "1 of them failed" in line
    assert len(records(out)) == 3


# ---- the frame cache is optional, so it may never be fatal ----------------------------------------------------
def _answers_without_cache(cli, tiny_checkpoint, warning: str) -> dict:
    code, out, err = cli(*ask_args(tiny_checkpoint))
    assert code == 0, err
    result = json.loads(out)
    assert result["answers"] and not result["from_cache"] and result["cache"] is None
    assert err.count("warning:") == 1 and warning in err, err
    return result


def test_cache_path_that_is_a_file(cli, tiny_checkpoint, monkeypatch, tmp_path):
    path = tmp_path / "cachefile"
    path.write_text("a file")
    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(path))
    _answers_without_cache(cli, tiny_checkpoint, "is a file")
    assert path.read_text() == "a file"


def test_unwritable_cache_folder(cli, tiny_checkpoint, monkeypatch, readonly_dir):
    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(readonly_dir / "vidmini-cache"))
    _answers_without_cache(cli, tiny_checkpoint, "cannot be written")


def test_full_disk_while_caching(cli, tiny_checkpoint, monkeypatch):
    import builtins

    import vidmini.cache

    class FullDisk:
        def __init__(self, real):
            self.real = real

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.real, name)

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and str(path).endswith("frames.u8") else handle

    monkeypatch.setattr(vidmini.cache, "open", open_on_a_full_disk, raising=False)
    _answers_without_cache(cli, tiny_checkpoint, "is full")
    assert [n for n in cache_listing() if not n.endswith(".lock")] == []  # no partial entry, no temp folder


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_invalid_cache_size_setting(cli, tiny_checkpoint, monkeypatch, value):
    monkeypatch.setenv("VIDMINI_CACHE_MAX_GB", value)
    _answers_without_cache(cli, tiny_checkpoint, "VIDMINI_CACHE_MAX_GB")


def _entry() -> Path:
    (entry,) = [cache_dir() / n for n in cache_listing() if not n.startswith(".") and not n.endswith(".lock")]
    return entry


DAMAGE = {
    "truncated frames.u8": lambda entry: os.truncate(entry / "frames.u8", (entry / "frames.u8").stat().st_size // 2),
    "zeroed frames.u8": lambda entry: (entry / "frames.u8").write_bytes(b"\0" * (entry / "frames.u8").stat().st_size),
    "meta.json cut short": lambda entry: (entry / "meta.json").write_text('{"count": 2, "times_s": [0'),
    "meta.json edited": lambda entry: (entry / "meta.json").write_text(
        (entry / "meta.json").read_text().replace('"count": 2', '"count": 1')),
    "meta.json missing": lambda entry: (entry / "meta.json").unlink(),
}


def test_damaged_cache_entry_is_discarded_and_rebuilt(cli, tiny_checkpoint):
    code, out, _ = cli(*ask_args(tiny_checkpoint))
    first = json.loads(out)
    for damage, apply in DAMAGE.items():  # each run rebuilds the entry that the next one damages
        apply(_entry())
        code, out, err = cli(*ask_args(tiny_checkpoint))
        assert code == 0 and err.count("warning:") == 1 and "is damaged" in err, (damage, err)
        again = json.loads(out)
        assert not again["from_cache"] and again["answers"] == first["answers"], damage
    meta = _entry() / "meta.json"  # an entry from before entries were verified: rebuilt, without a warning
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k not in ("format", "checksum")}))
    code, out, err = cli(*ask_args(tiny_checkpoint))
    assert code == 0 and not json.loads(out)["from_cache"] and "another version" in err and "warning" not in err
    code, out, err = cli(*ask_args(tiny_checkpoint))
    assert code == 0 and json.loads(out)["from_cache"] and "warning" not in err


def test_orphan_temp_folder_of_a_killed_writer_is_removed(cli, tiny_checkpoint, clips):
    """SIGKILL skips every cleanup: the writer's temp folder stays. The next run removes it (its owner is gone)."""
    import numpy as np

    from vidmini.cache import FrameCache
    from vidmini.video.frames import SIZE, FrameBatch

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer, killed mid-entry
        try:
            with FrameCache(str(clips / "a.mp4"), "plan").writer(4) as writer:
                writer.add(FrameBatch(np.zeros((2, SIZE, SIZE, 3), np.uint8), np.zeros(2), np.zeros(2, np.int64)))
                os.write(ready_w, b"1")
                time.sleep(60)
        finally:
            os._exit(1)
    assert os.read(ready_r, 1) == b"1"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    orphans = [n for n in cache_listing() if n.startswith(".")]
    assert orphans, "the killed writer left no temp folder"
    code, _, err = cli(*ask_args(tiny_checkpoint))
    assert code == 0, err
    assert not any(n in cache_listing() for n in orphans)


def _wait_for_temp_folder(proc, timeout=90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(n.startswith(".") for n in cache_listing()):
            return
        time.sleep(0.05)
    raise AssertionError("never started writing a cache entry")


def test_sigterm_stops_like_ctrl_c(tiny_checkpoint, tmp_path):
    """What `timeout`, Slurm and systemd send: a clean stop, one line, no partial entry, exit 143."""
    from vidmini.testing.videos import make_video

    video = make_video(str(tmp_path / "long.mp4"), 300, fps=1.0)
    proc = subprocess.Popen([sys.executable, "-m", "vidmini", "ask", video, "What?", "--model", str(tiny_checkpoint),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_temp_folder(proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert one_line(err) == "vidmini: terminated"
    assert [n for n in cache_listing() if not n.endswith(".lock")] == []


# ---- a size cap for the whole cache, and `vidmini cache` ------------------------------------------------------
def test_total_cap_evicts_the_least_recently_used(cli, tiny_checkpoint, clips, tmp_path, monkeypatch):
    entry_mb = 2 * 336 * 336 * 3 / 1024**2  # 2 frames, plus a small meta.json
    monkeypatch.setenv("VIDMINI_CACHE_MAX_GB", str(2.5 * entry_mb / 1024))  # room for two entries, not three
    c = tmp_path / "c.mp4"
    shutil.copy(clips / "a.mp4", c)
    os.utime(c, (1, 1))  # same content, another file: its own entry
    for video in (clips / "a.mp4", clips / "b.mp4", clips / "a.mp4", c):  # a is used again after b
        code, _, err = cli(*ask_args(tiny_checkpoint, video))
        assert code == 0, err
    assert "evicted 1 least recently used entry" in err
    code, out, _ = cli("cache", "--json")
    listing = json.loads(out)
    assert code == 0 and sorted(Path(e["source"]).name for e in listing["entries"]) == ["a.mp4", "c.mp4"]
    assert listing["total_bytes"] <= listing["limit_bytes"]


def test_cache_command_shows_and_clears(cli, tiny_checkpoint):
    assert cli(*ask_args(tiny_checkpoint))[0] == 0
    (cache_dir() / ".photos").mkdir()  # VIDMINI_CACHE_DIR pointed at a folder with other things in it
    (cache_dir() / "photos").mkdir()
    code, out, _ = cli("cache")
    assert code == 0 and "1 entry" in out and "scenes.mp4" in out
    code, out, _ = cli("cache", "--json")
    (entry,) = json.loads(out)["entries"]
    assert entry["frames"] == 2 and entry["bytes"] > 2 * 336 * 336 * 3 and entry["source"].endswith("scenes.mp4")
    assert cli("cache", "clear", "--older-than", "1d")[0] == 0 and len(json.loads(cli("cache", "--json")[1])["entries"]) == 1
    assert cli("cache", "clear", "--older-than", "soon")[0] == 2
    code, out, _ = cli("cache", "clear", "--json")
    assert code == 0 and json.loads(out)["freed_bytes"] == entry["bytes"]
    assert json.loads(cli("cache", "--json")[1])["entries"] == []
    assert (cache_dir() / ".photos").is_dir() and (cache_dir() / "photos").is_dir()  # only entries are ours
