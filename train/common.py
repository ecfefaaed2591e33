"""Shared by the training stages: checkpoints that resume, a loss log, CPU threads."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch


def setup_threads(n: int | None = None) -> None:
    # The training machine is shared: one thread unless told otherwise. Measured under load (nice 10): a 512x512
    # matmul ran at 7.2 GFLOP/s on 1 thread and 2.5 on 2 (OpenMP barriers wait on descheduled threads).
    torch.set_num_threads(n or int(os.environ.get("VIDMINI_TRAIN_THREADS", "1")))


def produced(make: Callable, items: Iterable, workers: int) -> Iterator:
    """make(item) for each item, in order: made ahead by `workers` processes (rendering and encoding the data is
    about half a step; a worker does it on the other core), or here when workers is 0."""
    if not workers:
        return map(make, items)
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=setup_threads)
    return pool.imap(make, items)


def save(path: Path, **state) -> None:
    """Atomic: a crash mid-write never leaves a half checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


class LossLog:
    """Appends one JSON line per logged step (train/runs/<stage>/log.jsonl) and prints it."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.started = path, time.monotonic()

    def write(self, **fields) -> None:
        fields["elapsed_s"] = round(time.monotonic() - self.started, 1)
        line = json.dumps(fields)
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")
