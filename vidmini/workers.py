"""`summarize --devices cuda:0,cuda:1`: one worker process per device, each with its own model; this process is
the only writer of the report, so records stay whole and ordered by completion."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue

from vidmini.summarize import Report, SummarizeOptions, discover, plan_work


def _worker(device: str, load: dict, options: SummarizeOptions, threads: int, tasks, results) -> None:
    import torch

    from vidmini.cli import make_engine
    from vidmini.summarize import summarize_file

    torch.set_num_threads(threads)
    try:
        engine = make_engine(device=device, **load)
    except Exception as err:  # noqa: BLE001  reported by the parent as one line
        results.put(("fatal", f"{device}: {str(err).splitlines()[0]}"))
        return
    while True:
        path = tasks.get()
        if path is None:
            results.put(("finished", device))
            return
        engine.recorder.stages.clear()
        results.put(("record", summarize_file(engine, path, options)))


def run_on_devices(devices: list[str], paths: list[str], out: str, options: SummarizeOptions, load: dict,
                   progress: bool = True) -> tuple[int, int, int]:
    from vidmini.errors import MODEL_LOAD, VidminiExit
    from vidmini.summarize import FolderProgress

    report = Report(out)
    todo, skipped = plan_work(discover(paths, options.glob, options.recursive), report, options)
    if not todo:
        return 0, skipped, 0
    ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA state or torch threads inherited
    tasks, results = ctx.Queue(), ctx.Queue()
    for path in todo:
        tasks.put(path)
    for _ in devices:
        tasks.put(None)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    workers = [ctx.Process(target=_worker, args=(d, load, options, threads, tasks, results), daemon=True)
               for d in devices]
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
                        raise VidminiExit(1, "every summarize worker stopped unexpectedly")
                    continue
                if kind == "fatal":
                    raise VidminiExit(MODEL_LOAD, payload)
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
    return done, skipped, failed
