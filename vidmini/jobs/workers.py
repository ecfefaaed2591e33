"""`summarize --devices cuda:0,cuda:1`: one worker process per device, each with its own model; this process is
the only writer of the report (summarize.run_job), so records stay whole and ordered by completion."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Iterator

from vidmini.jobs.summarize import Finished, FolderProgress, Started, SummarizeOptions, run_job


def _worker(name: str, load, engine_options, profile_memory: bool, options: SummarizeOptions, threads: int, tasks,
            results) -> None:
    import torch

    from vidmini.engine.engine import build_engine
    from vidmini.errors import exit_code_for, first_line
    from vidmini.jobs.summarize import summarize_file

    torch.set_num_threads(threads)
    try:
        engine = build_engine(load, engine_options, profile_memory, options.questions, options.max_question_tokens)
    except Exception as err:  # noqa: BLE001  reported by the parent as one line
        results.put(("fatal", name, (exit_code_for(err), f"{load.device}: {first_line(err)}")))
        return
    while True:
        path = tasks.get()
        if path is None:
            results.put(("finished", name, None))
            return
        results.put(("started", name, path))
        engine.recorder.stages.clear()
        results.put(("record", name, summarize_file(engine, path, options)))


def device_events(loads: list, engine_options, profile_memory: bool, options: SummarizeOptions):
    """The event source (summarize.EventSource) of one spawned worker per LoadOptions (each names its device)."""

    def events(todo: list[str], bar: FolderProgress) -> Iterator[Started | Finished]:
        from vidmini import errors
        from vidmini.errors import ModelLoadError, VidminiError

        ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA state or torch threads inherited
        tasks, results = ctx.Queue(), ctx.Queue()
        for path in todo:
            tasks.put(path)
        for _ in loads:
            tasks.put(None)
        threads = max(1, (os.cpu_count() or 1) // len(loads))
        workers = [ctx.Process(target=_worker, args=(f"worker {i + 1} ({load.device})", load, engine_options,
                                                     profile_memory, options, threads, tasks, results), daemon=True)
                   for i, load in enumerate(loads)]
        for w in workers:
            w.start()
        finished = 0
        try:
            while finished < len(workers):
                try:
                    kind, name, payload = results.get(timeout=1.0)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):
                        raise VidminiError("every summarize worker stopped unexpectedly")
                    continue
                if kind == "fatal":  # the worker's own exit code: a model that cannot load is 4, an option 2
                    code, message = payload
                    failure = ModelLoadError(message)
                    failure.code = code if code != errors.FAILED else errors.MODEL_LOAD
                    raise failure
                if kind == "finished":
                    finished += 1
                elif kind == "started":
                    yield Started(payload, name)
                else:
                    yield Finished(payload, name)
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()
                w.join(timeout=10)

    return events


def run_on_devices(loads: list, engine_options, profile_memory: bool, paths: list[str], out: str,
                   options: SummarizeOptions, progress: bool = True) -> tuple[int, int, int, int]:
    """One worker per LoadOptions. Returns (done, skipped, failed, failed in an earlier run) like run_summarize."""
    return run_job(paths, out, options, device_events(loads, engine_options, profile_memory, options), progress)
