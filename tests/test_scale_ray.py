"""`vidmini summarize --ray`: the same report as the plain loop, from workers on a Ray cluster that may die.

One local Ray cluster serves the whole module (`ray_cluster`: starting one costs seconds). The CLI runs in this
process through the real entry point; `--ray auto` then uses this process's connection. Only the driver-kill case
needs a child process, which joins the same cluster through RAY_ADDRESS. The fast cases at the top need no
cluster (and no Ray for the "not installed" one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, corpus

FAST = ["--max-frames", "3", "--max-new-tokens", "2", "--quiet"]
BROKEN = "audio_only_2x_aac_no_video_mediabunny.mp4"  # fails by itself: recorded once, never retried
GOOD = "vp8_odd_175x143_testvector_006.ivf"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # raises on a torn line


def content(path: Path) -> dict[str, dict]:
    """The report by file, without timings (the only fields that differ between runs)."""
    by_path = {}
    for r in records(path):
        assert r["path"] not in by_path, f"two records for {r['path']}"
        by_path[r["path"]] = {k: v for k, v in r.items() if k != "timings_s"}
    return by_path


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---- no cluster needed --------------------------------------------------------------------------------------------
def test_without_ray_installed_ray_is_one_line_saying_what_to_install(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    out = tmp_path / "r.jsonl"
    code, _, err = cli("summarize", REPO / "sample_videos", "--out", out, "--ray", "auto", "--model", "/no/model")
    assert code == 2 and "pip install 'vidmini[ray]'" in one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("extra,says", [
    (["--ray", "auto", "--devices", "cpu,cpu"], "do not go together"),
    (["--ray", "auto", "--device", "cuda:1"], "use --device cuda"),
    (["--workers", "2"], "--workers goes with --ray"),
])
def test_ray_options_that_cannot_work_are_refused_before_any_work(cli, tmp_path, extra, says):
    code, _, err = cli("summarize", REPO / "sample_videos", "--out", tmp_path / "r.jsonl", "--model", "/no/model",
                       *extra)
    assert code == 2 and says in one_line(err)


def test_an_address_where_nothing_answers_is_one_line_at_once(cli, tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    code, _, err = cli("summarize", REPO / "sample_videos", "--out", tmp_path / "r.jsonl", "--model", "/no/model",
                       "--ray", address)
    assert code == 2 and f"nothing answers at {address}" in one_line(err)


def test_worker_plan():
    from vidmini.errors import UsageError
    from vidmini.jobs.scale.ray import WorkerPlan, plan_workers

    assert plan_workers("auto", None, [2], 0) == WorkerPlan(1, "cpu", 2, 0)  # one per node, all its cores
    assert plan_workers("cpu", 2, [2], 0) == WorkerPlan(2, "cpu", 1, 0)
    assert plan_workers("cpu", None, [8, 4], 0) == WorkerPlan(2, "cpu", 6, 0)
    assert plan_workers("cpu", 1, [8, 4], 0).num_cpus == 8  # never more than one node has
    assert plan_workers("auto", None, [8, 8], 4) == WorkerPlan(4, "cuda", 1, 1)  # one per GPU
    assert plan_workers("cpu", None, [8], 4).device == "cpu"
    with pytest.raises(UsageError):
        plan_workers("cuda", None, [8], 0)


def test_a_file_a_worker_cannot_open_gets_a_record_naming_the_workers_host(tmp_path):
    from vidmini.jobs.scale.ray import unreadable_record
    from vidmini.jobs.summarize import SummarizeOptions

    options = SummarizeOptions(max_new_tokens=2)
    missing = str(tmp_path / "mounted-only-on-the-driver.mp4")
    record = unreadable_record(missing, "node-7", options)
    assert record["path"] == missing and record["prompt_key"] == options.prompt_key()
    assert "node-7" in record["error"] and "shares" in record["error"] and "\n" not in record["error"]
    assert unreadable_record(str(REPO / "sample_videos" / "scenes.mp4"), "node-7", options) is None


def test_a_worker_that_cannot_load_the_model_says_where(tmp_path):
    """In process (no Ray): the actor's class keeps the load error for the driver, which exits 4 with it."""
    from vidmini.engine.engine import EngineOptions
    from vidmini.errors import ModelLoadError
    from vidmini.families.loading import LoadOptions
    from vidmini.jobs.scale.ray import SummarizeWorker
    from vidmini.jobs.summarize import SummarizeOptions

    import torch

    threads = torch.get_num_threads()
    try:
        worker = SummarizeWorker(LoadOptions(str(tmp_path / "no-model"), "cpu"), EngineOptions(), False,
                                 SummarizeOptions(), 1)
    finally:
        torch.set_num_threads(threads)
    host, pid, error = worker.ready()
    assert (host, pid) == (socket.gethostname(), os.getpid()) and error.startswith(f"{host}: ")
    with pytest.raises(ModelLoadError):
        worker.summarize(str(REPO / "sample_videos" / "scenes.mp4"))


def test_ray_init_does_not_take_sigterm_away(monkeypatch):
    """ray.init installs its own SIGTERM handler (sys.exit); vidmini's (stop like Ctrl-C, exit 143) must stay."""
    from vidmini.jobs.scale.ray import connected

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))

        def shutdown(self):
            pass

    class Bar:
        def note(self, *args, **kwargs):
            pass

    ours = signal.getsignal(signal.SIGTERM)
    with connected(FakeRay(), "auto", Bar()):
        assert signal.getsignal(signal.SIGTERM) is ours


# ---- on a local Ray cluster ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster of 2 CPUs for the module; its address, for child processes."""
    ray = pytest.importorskip("ray")
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # even if `ray start` ran
    signal.signal(signal.SIGTERM, previous)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Sample videos, generated clips, a good and a broken corpus file, and bytes that are no video."""
    from vidmini.testing.videos import make_video

    root = tmp_path_factory.mktemp("ray") / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("scenes.mp4", "counter.mp4"):
        shutil.copy(REPO / "sample_videos" / name, root / name)
    for name in (GOOD, BROKEN):
        shutil.copy(corpus(name), root / "sub" / name)
    for i in range(3):
        make_video(str(root / f"clip{i}.mp4"), 4, fps=2.0)
    make_video(str(root / "long.mp4"), 600, fps=2.0)  # the one a worker is killed on: held long enough to see
    (root / "zeros.mp4").write_bytes(b"\x00" * 4096)
    return root


@pytest.fixture(scope="module")
def plain_report(tiny_checkpoint, videos, tmp_path_factory) -> Path:
    from vidmini.cli import main

    out = tmp_path_factory.mktemp("plain") / "r.jsonl"
    assert main(["summarize", str(videos), "--out", str(out), "--model", str(tiny_checkpoint), *FAST]) == 3
    return out


def _kill_when_it_holds(pid: int, path: str, seen: dict) -> None:
    """SIGKILL `pid` once it has `path` open (its /proc fd table shows it): the worker is inside the file."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            held = any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            held = False
        if held:
            seen["held"] = True
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.002)


@pytest.mark.slow
def test_ray_gives_the_plain_report_even_when_a_worker_is_killed_mid_file(
        ray_cluster, tiny_checkpoint, videos, plain_report, tmp_path, cli, monkeypatch):
    """One record per file, errors recorded, the same content as without Ray, the same Markdown; a worker
    SIGKILLed while it holds a file costs that file one more try elsewhere, nothing else."""
    import vidmini.jobs.summarize

    target = str(videos.resolve() / "long.mp4")
    sent: list[tuple[str, str]] = []
    seen: dict = {}
    begin = vidmini.jobs.summarize.FolderProgress.begin

    def watch(self, path, worker=None):
        sent.append((path, worker))
        if path == target and not seen:
            seen["pid"] = int(re.search(r"pid (\d+)", worker).group(1))
            threading.Thread(target=_kill_when_it_holds, args=(seen["pid"], target, seen), daemon=True).start()
        begin(self, path, worker)

    monkeypatch.setattr(vidmini.jobs.summarize.FolderProgress, "begin", watch)
    out, md = tmp_path / "r.jsonl", tmp_path / "r.md"
    code, _, err = cli("summarize", videos, "--out", out, "--markdown", md, "--model", tiny_checkpoint, *FAST,
                       "--ray", "auto", "--workers", "2")
    assert code == 3, err  # broken files: recorded with their reason, exit 3 as without Ray
    assert seen.get("held"), f"the worker never held {target}"
    assert f"{target}: worker" in err and f"pid {seen['pid']}) died while on it" in err  # said, on stderr
    assert content(out) == content(plain_report)  # one complete record per file, the killed one's included
    plain_md = tmp_path / "plain.md"
    assert cli("summarize", "--out", plain_report, "--markdown", plain_md).code == 0
    assert md.read_text().split("\n", 1)[1] == plain_md.read_text().split("\n", 1)[1]  # but for the source line
    times = {p: [w for q, w in sent if q == p] for p, _ in sent}
    assert len(times[target]) == 2 and times[target][0] != times[target][1]  # retried, on another worker
    assert all(len(times[p]) == 1 for p in times if p != target)  # the rest once, broken ones included
    assert {os.path.basename(p) for p, r in content(out).items() if r["error"]} == {BROKEN, "zeros.mp4"}


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_with_ray_does_only_the_unfinished_files(
        ray_cluster, tiny_checkpoint, tmp_path, cli, monkeypatch):
    import vidmini.jobs.summarize
    from vidmini.testing.videos import make_video

    root = tmp_path / "many"
    root.mkdir()
    names = [f"v{i}.mp4" for i in range(8)]
    for name in names:
        make_video(str(root / name), 20, fps=2.0)
    out = tmp_path / "r.jsonl"
    args = [str(root), "--out", str(out), "--model", str(tiny_checkpoint), "--max-new-tokens", "2",
            "--ray", "auto", "--workers", "1", "--quiet"]
    driver = subprocess.Popen([sys.executable, "-m", "vidmini", "summarize", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "RAY_ADDRESS": ray_cluster})
    # the loop ends at the second record; the deadline is only for a driver that never gets there (a Ray worker
    # took over 120 s to start when the machine ran three other jobs on its two cores)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and driver.poll() is None and (not out.exists() or len(records(out)) < 2):
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate()
    assert out.exists(), f"no record in 600 s: {err.decode()}"
    before = records(out)
    assert 2 <= len(before) < len(names), err.decode()
    sent = []
    begin = vidmini.jobs.summarize.FolderProgress.begin
    monkeypatch.setattr(vidmini.jobs.summarize.FolderProgress, "begin",
                        lambda self, path, worker=None: (sent.append(path), begin(self, path, worker)))
    code, _, err = cli("summarize", *args)
    assert code == 0, err
    unfinished = {str(root.resolve() / n) for n in names} - {r["path"] for r in before}
    assert sorted(sent) == sorted(unfinished)  # only those went to the cluster, each once
    assert f"{len(unfinished)} file(s) processed (0 failed), {len(before)} already in" in err
    after = records(out)
    assert after[: len(before)] == before and len(after) == len(names) == len({r["path"] for r in after})
    assert all(r["error"] is None for r in after)
