"""`summarize --ray [auto|ADDRESS]`: the files of a summarize job on a Ray cluster.

The unit of work is one file: the engine's token buffer needs every frame of a video, in order, on one device.
Each worker is a Ray actor that loads the model once and then summarizes the files the driver hands it, one at a
time. The driver (this process) plans the work, hands out files, and is the report's only writer through
summarize.run_job, exactly as in the plain loop: files already in the report never reach the cluster, and every
record is appended and fsynced as soon as it arrives, so killing the driver loses nothing already written.

Faults. A worker (or its node) that dies while it holds a file loses that file's work only: the driver replaces
the worker and hands the file to another one, up to MAX_ATTEMPTS in all, then records an error with the reason.
A file that fails by itself (a bad video) comes back as an error record from summarize_file and is recorded
once, never retried. An exception in our own code on a worker stops the run as it would stop the plain loop,
with the same exit code.

Paths. Workers open files by the path the driver sees, so the folders must be on a filesystem every node shares
(the same mount point everywhere). A file a worker cannot open gets an error record naming the worker's host.

Ray is imported only here, only when --ray is given; `ray.init` and the handling of Ray's errors live in this one
module.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from vidmini.errors import ModelLoadError, UsageError, VidminiError, first_line
from vidmini.infra.outputs import new_record
from vidmini.jobs.summarize import (Finished, FolderProgress, Started, SummarizeOptions, file_identity, run_job,
                               summarize_file)

INSTALL = "pip install 'vidmini[ray]'"
MAX_ATTEMPTS = 3  # a file whose worker dies is tried this often in all (a file that kills every worker must end)
START_TIMEOUT_S = 1800.0  # no worker up for this long: the cluster cannot place one (an 8B load can take minutes)
WAIT_NOTE_S = 60.0  # then say what we are waiting for


def require_ray():
    """The ray module, or exit 2 with what to install."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def check_options(devices: str | None, device: str) -> None:
    """Everything about --ray that can be refused before any work (exit 2)."""
    if devices:
        raise UsageError("--ray and --devices do not go together: --devices runs on this machine only")
    if device.startswith("cuda:"):
        raise UsageError(f"--device {device}: with --ray each worker gets its own GPU from Ray; use --device cuda")
    require_ray()


# ---- how many workers, and what each asks Ray for -------------------------------------------------------------
@dataclass(frozen=True)
class WorkerPlan:
    count: int
    device: str  # what each worker loads the model on: "cuda" (the GPU Ray gave it) or "cpu"
    num_cpus: int  # also its torch threads: a CPU worker uses exactly the cores it reserved
    num_gpus: int

    def describe(self) -> str:
        each = f"1 GPU + {self.num_cpus} CPU" if self.num_gpus else f"{self.num_cpus} CPU"
        return f"{self.count} worker(s), each {each}"


def plan_workers(device: str, workers: int | None, node_cpus: list[int], gpus: int) -> WorkerPlan:
    """GPU workers (one GPU each) when asked for or, with --device auto, when the cluster has GPUs; by default
    one per GPU. CPU workers: by default one per node, each taking its share of the cluster's cores, never more
    than the biggest node has (a worker runs on one node)."""
    if device == "cuda" or (device == "auto" and gpus > 0):
        if gpus == 0:
            raise UsageError("--device cuda: the Ray cluster has no GPU")
        return WorkerPlan(workers or gpus, "cuda", 1, 1)
    count = workers or max(1, len(node_cpus))
    per_worker = max(1, min(max(node_cpus, default=1), sum(node_cpus) // count))
    return WorkerPlan(count, "cpu", per_worker, 0)


# ---- the worker (a Ray actor) ---------------------------------------------------------------------------------
class SummarizeWorker:
    """Loads the model once, then summarizes one file per call. Wrapped by ray.remote at run time, so this module
    imports without Ray (and the class can be used in process, as the tests do)."""

    def __init__(self, load, engine_options, profile_memory: bool, options: SummarizeOptions, threads: int):
        import torch

        from vidmini.engine.engine import build_engine

        self.host, self.pid = socket.gethostname(), os.getpid()
        self.options = options
        self.load_error: str | None = None
        torch.set_num_threads(threads)
        try:
            self.engine = build_engine(load, engine_options, profile_memory, options.questions,
                                       options.max_question_tokens)
        except Exception as err:  # noqa: BLE001  the driver turns it into one line and exit 4
            self.load_error = f"{self.host}: {first_line(err)}"

    def ready(self) -> tuple[str, int, str | None]:
        """(host, pid, why the model did not load or None): the driver's first call, answered once loaded."""
        return self.host, self.pid, self.load_error

    def summarize(self, path: str) -> dict:
        if self.load_error:
            raise ModelLoadError(self.load_error)
        unreadable = unreadable_record(path, self.host, self.options)
        if unreadable is not None:
            return unreadable
        self.engine.recorder.stages.clear()
        return summarize_file(self.engine, path, self.options)


def unreadable_record(path: str, host: str, options: SummarizeOptions) -> dict | None:
    """The error record of a file this host cannot open (its mount is missing or differs), or None."""
    try:
        with open(path, "rb"):
            return None
    except OSError as err:
        return new_record(path, options.prompt_key(),
                          f"{path}: cannot be read by the Ray worker on host {host} ({err.strerror or err}); "
                          "workers open files by the driver's path, so it must be on a filesystem every node shares")


# ---- the driver -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RaySettings:
    address: str = "auto"
    workers: int | None = None


@contextmanager
def connected(ray, address: str, bar: FolderProgress) -> Iterator[None]:
    """Join a cluster: `auto` is the one RAY_ADDRESS names, else the one `ray start` made on this machine, else a
    new local one (ray.init with no address does exactly that); otherwise ADDRESS. A process already connected
    (a notebook, the tests) keeps its connection and we leave it open."""
    given = (os.environ.get("RAY_ADDRESS") or None) if address == "auto" else address
    silent = given and _unreachable(given)
    if silent:
        raise UsageError(f"--ray {address}: nothing answers at {given} ({silent}); start the cluster with "
                         "`ray start --head` there, or use --ray auto")
    if ray.is_initialized():
        yield
        return
    started = time.monotonic()
    with _sigterm_kept():
        try:
            ray.init(address=None if address == "auto" else address, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as err:
            raise UsageError(f"--ray {address}: cannot connect to a Ray cluster ({first_line(err)}); if it uses "
                             "token authentication, set RAY_AUTH_MODE=token and give this machine the cluster's "
                             "token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from err
    bar.note(f"Ray: connected in {time.monotonic() - started:.1f} s")
    try:
        yield
    finally:
        ray.shutdown()  # a local cluster we started stops; a joined one only loses this driver (and its workers)


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at host:port, or None (also for addresses we cannot parse: Ray judges those). Ray
    itself retries a wrong address for minutes before it gives up."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        return err.strerror or str(err)
    return None


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """ray.init replaces the SIGTERM handler with sys.exit; ours stops like Ctrl-C (cleanup, exit 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cluster_plan(ray, device: str, workers: int | None) -> WorkerPlan:
    resources = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    node_cpus = [int(r.get("CPU", 0)) for r in resources if r.get("CPU", 0) >= 1]  # a head with 0 CPUs runs none
    return plan_workers(device, workers, node_cpus, int(sum(r.get("GPU", 0) for r in resources)))


def describe_cluster(ray, plan: WorkerPlan) -> str:
    """What the cluster has and what the workers ask; whether they all fit at once."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    fits = min(cpus // plan.num_cpus, gpus // plan.num_gpus if plan.num_gpus else cpus)
    room = f" (room for {int(fits)} at a time; the rest wait)" if fits < plan.count else ""
    return f"Ray: {len(ray.nodes())} node(s), {cpus:g} CPU, {gpus:g} GPU; {plan.describe()}{room}"


@dataclass
class _Slot:
    """One worker place: its actor, starting (`ready` pending) or up, and the file it holds."""

    number: int
    actor: object
    ready: object | None  # the ObjectRef of actor.ready() until the worker is up
    name: str = ""
    path: str | None = None
    call: object | None = None  # the ObjectRef of the file it holds
    start_failures: int = 0  # in a row, in this place

    @property
    def idle(self) -> bool:
        return self.ready is None and self.path is None


class _Pool:
    """The workers of one run and the files waiting for one. A worker that dies is replaced in its place."""

    def __init__(self, ray, start_actor, count: int, todo: list[str]):
        self.ray, self.start_actor = ray, start_actor
        self.waiting: deque[tuple[str, int | None]] = deque((path, None) for path in todo)  # (file, place it died in)
        self.attempts: dict[str, int] = {}
        self.slots = [self._start(number) for number in range(1, count + 1)]

    def _start(self, number: int, start_failures: int = 0) -> _Slot:
        actor = self.start_actor()
        return _Slot(number, actor, actor.ready.remote(), name=f"worker {number}", start_failures=start_failures)

    def replace(self, slot: _Slot, start_failed: bool = False) -> None:
        self.ray.kill(slot.actor, no_restart=True)  # it may be unreachable rather than dead: make sure
        self.slots[self.slots.index(slot)] = self._start(slot.number, slot.start_failures + 1 if start_failed else 0)

    def give_work(self) -> Iterator[Started]:
        """Hand waiting files to idle workers; a file whose worker died goes preferably to another place."""
        for slot in self.slots:
            if not (slot.idle and self.waiting):
                continue
            pick = next((entry for entry in self.waiting if entry[1] != slot.number), self.waiting[0])
            self.waiting.remove(pick)
            slot.path, slot.call = pick[0], slot.actor.summarize.remote(pick[0])
            yield Started(slot.path, slot.name)

    def busy(self) -> bool:
        return bool(self.waiting) or any(s.path for s in self.slots)

    def awaited(self) -> dict:
        """ObjectRef -> its slot, for everything the driver waits on: workers starting and files in work."""
        refs = {s.ready: s for s in self.slots if s.ready is not None}
        refs.update({s.call: s for s in self.slots if s.call is not None})
        return refs

    def up(self) -> int:
        return sum(s.ready is None for s in self.slots)

    def stop(self) -> None:
        for slot in self.slots:
            self.ray.kill(slot.actor, no_restart=True)


def ray_events(settings: RaySettings, load, engine_options, profile_memory: bool, options: SummarizeOptions):
    """The event source (summarize.EventSource) of a Ray cluster's workers."""

    def events(todo: list[str], bar: FolderProgress) -> Iterator[Started | Finished]:
        ray = require_ray()
        with connected(ray, settings.address, bar):
            plan = cluster_plan(ray, load.device, settings.workers)
            bar.note(describe_cluster(ray, plan))
            remote = ray.remote(SummarizeWorker).options(
                num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
                max_restarts=0, max_task_retries=0,  # the driver replaces workers and retries files itself
                scheduling_strategy="SPREAD")  # CPU workers: one per node before two on one node
            args = (replace(load, device=plan.device), engine_options, profile_memory, options, plan.num_cpus)
            pool = _Pool(ray, lambda: remote.remote(*args), plan.count, todo)
            try:
                yield from _drive(ray, pool, options, bar)
            finally:
                pool.stop()

    return events


def _drive(ray, pool: _Pool, options: SummarizeOptions, bar: FolderProgress) -> Iterator[Started | Finished]:
    """Hand out files and turn what comes back into events until every file has its record."""
    began = last_up = time.monotonic()
    all_up_said = waiting_said = False
    while pool.busy():
        yield from pool.give_work()
        refs = pool.awaited()
        done, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for ref in done:
            slot = refs[ref]
            if slot.ready is not None and ref == slot.ready:
                _worker_up(ray, pool, slot, bar)
            else:
                yield from _file_back(ray, pool, slot, ref, options, bar)
        now = time.monotonic()
        if pool.up():
            last_up = now
            if pool.up() == len(pool.slots) and not all_up_said:
                all_up_said = True
                bar.note(f"Ray: {pool.up()} worker(s) up (model loaded) in {now - began:.1f} s")
        elif now - last_up > START_TIMEOUT_S:
            raise VidminiError(f"no Ray worker could start in {START_TIMEOUT_S:.0f} s: the cluster has "
                               f"{ray.cluster_resources()}; is there room for one worker?")
        elif now - last_up > WAIT_NOTE_S and not waiting_said:
            waiting_said = True
            bar.note(f"Ray: still waiting for a worker to start; the cluster has {ray.available_resources()} free",
                     always=True)


def _worker_up(ray, pool: _Pool, slot: _Slot, bar: FolderProgress) -> None:
    from ray.exceptions import RayError

    try:
        host, pid, load_error = ray.get(slot.ready)
    except RayError as err:  # it died while starting: killed, out of memory, its node lost
        if slot.start_failures + 1 >= MAX_ATTEMPTS:
            raise VidminiError(f"Ray workers keep dying while they load the model (last: {first_line(err)})") from err
        bar.note(f"{slot.name} died while starting ({first_line(err)}); starting another", always=True)
        pool.replace(slot, start_failed=True)
        return
    if load_error:
        raise ModelLoadError(f"{slot.name}: {load_error}")
    slot.ready, slot.name = None, f"worker {slot.number} ({host}, pid {pid})"


def _file_back(ray, pool: _Pool, slot: _Slot, ref, options: SummarizeOptions,
               bar: FolderProgress) -> Iterator[Finished]:
    from ray.exceptions import RayError, RayTaskError

    path, slot.path, slot.call = slot.path, None, None
    try:
        record = ray.get(ref)
    except RayTaskError as err:  # our own code raised on the worker: stop as the plain loop would, same exit code
        cause = getattr(err, "cause", None)
        raise (cause if isinstance(cause, BaseException) else err) from None
    except RayError as err:  # the worker (or its node) is gone, and with it this file's work so far
        reason = f"{slot.name} died while on it: {first_line(err).rstrip('.')}"
        yield from _lost(pool, slot, path, reason, options, bar)
        return
    yield Finished(record, slot.name)


def _lost(pool: _Pool, slot: _Slot, path: str, reason: str, options: SummarizeOptions,
          bar: FolderProgress) -> Iterator[Finished]:
    attempts = pool.attempts[path] = pool.attempts.get(path, 0) + 1
    bar.forget(slot.name)
    pool.replace(slot)
    if attempts < MAX_ATTEMPTS:
        bar.note(f"{path}: {reason}; trying it again on another worker (attempt {attempts + 1} of {MAX_ATTEMPTS})",
                 always=True)
        pool.waiting.appendleft((path, slot.number))
        return
    yield Finished(lost_record(path, options, f"{attempts} Ray workers died while on this file (last: {reason})"),
                   slot.name)


def lost_record(path: str, options: SummarizeOptions, error: str) -> dict:
    """An error record like summarize_file's own: with the file's identity, so a rerun counts it as done (and
    --force redoes it) rather than sending a file that kills workers to the cluster again and again."""
    record = new_record(path, options.prompt_key(), f"{path}: {error}")
    try:
        record.update(file_identity(path))
    except OSError:
        pass
    return record


def run_on_ray(settings: RaySettings, load, engine_options, profile_memory: bool, paths: list[str], out: str,
               options: SummarizeOptions, progress: bool = True) -> tuple[int, int, int, int]:
    """Returns (done, skipped, failed, failed in an earlier run) like run_summarize."""
    return run_job(paths, out, options, ray_events(settings, load, engine_options, profile_memory, options), progress)
