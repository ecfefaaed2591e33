"""`summarize --devices cuda:0,cuda:1`: one worker process per device, each with its own model; this process is
the only writer of the report, so records stay whole and ordered by completion."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue

from vidmini.summarize import Report, SummarizeOptions, find_videos, plan_work


def _worker(load, engine_options, profile_memory: bool, options: SummarizeOptions, threads: int, tasks,
            results) -> None:
    import torch

    from vidmini.engine import build_engine
    from vidmini.errors import first_line
    from vidmini.summarize import summarize_file

    device = load.device
    torch.set_num_threads(threads)
    try:
        engine = build_engine(load, engine_options, profile_memory)
    except Exception as err:  # noqa: BLE001  reported by the parent as one line
        results.put(("fatal", f"{device}: {first_line(err)}"))
        return
    while True:
        path = tasks.get()
        if path is None:
            results.put(("finished", device))
            return
        engine.recorder.stages.clear()
        results.put(("record", summarize_file(engine, path, options)))


def run_on_devices(loads: list, engine_options, profile_memory: bool, paths: list[str], out: str,
                   options: SummarizeOptions, progress: bool = True) -> tuple[int, int, int, int]:
    """One worker per LoadOptions (each names its device). Returns (done, skipped, failed, failed in an earlier
    run) like run_summarize."""
    from vidmini.errors import ModelLoadError, VidminiError
    from vidmini.summarize import FolderProgress

    report = Report(out)
    todo, skipped, earlier_failed = plan_work(find_videos(paths, options.glob, options.recursive), report, options)
    if not todo:
        return 0, skipped, 0, earlier_failed
    ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA state or torch threads inherited
    tasks, results = ctx.Queue(), ctx.Queue()
    for path in todo:
        tasks.put(path)
    for _ in loads:
        tasks.put(None)
    threads = max(1, (os.cpu_count() or 1) // len(loads))
    workers = [ctx.Process(target=_worker, args=(load, engine_options, profile_memory, options, threads, tasks,
                                                 results), daemon=True)
               for load in loads]
    for w in workers:
        w.start()
    done = failed = finished = 0
    try:
        with FolderProgress(todo, enabled=progress) as bar:
            while finished < len(workers):
                try:
                    kind, payload = results.get(timeout=1.0)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):
                        raise VidminiError("every summarize worker stopped unexpectedly")
                    continue
                if kind == "fatal":
                    raise ModelLoadError(payload)
                if kind == "finished":
                    finished += 1
                    continue
                report.append(payload)
                done += 1
                failed += payload["error"] is not None
                bar.end(payload["path"], payload)
                if payload["error"] is not None and options.fail_fast:
                    break
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join(timeout=10)
    return done, skipped, failed, earlier_failed
