"""A cache of decoded frames, so that a second question about the same video does not decode it again.

What is cached is the question-independent input of the model: the sampled frames at 336x336 (uint8), keyed by
the file's identity (path, size, mtime) and the sampling plan. Everything after them (CLIP, pre-fusion) depends
on the question and is recomputed, so answers are identical to a fresh run. Frames do not depend on the model,
so the entry serves every model. Entries are written to a private temp folder and renamed into place when
complete (an interrupted run leaves nothing half-written); an exclusive lock keeps two processes from writing
the same entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vidmini.video.frames import SIZE, DecodeReport, FrameBatch

FRAME_BYTES = SIZE * SIZE * 3
DEFAULT_LIMIT_GB = 8.0


def cache_root() -> Path:
    if os.environ.get("VIDMINI_CACHE_DIR"):
        return Path(os.environ["VIDMINI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vidmini" / "frames"


def limit_bytes() -> int:
    return int(float(os.environ.get("VIDMINI_CACHE_MAX_GB", DEFAULT_LIMIT_GB)) * 1024**3)


def entry_key(path: str, plan_key: str) -> str:
    stat = os.stat(path)
    ident = f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{plan_key}|{SIZE}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


class FrameCache:
    def __init__(self, path: str, plan_key: str, root: Path | None = None):
        self.root = root or cache_root()
        self.key = entry_key(path, plan_key)
        self.dir = self.root / self.key
        self._meta: dict | None = None

    # ---- reading ------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / "meta.json").is_file() and (self.dir / "frames.u8").is_file()

    def meta(self) -> dict:
        """The entry's metadata, read once (it lists every frame's time: large for long videos)."""
        if self._meta is None:
            self._meta = json.loads((self.dir / "meta.json").read_text())
        return self._meta

    def batches(self, batch_size: int) -> Iterator[FrameBatch]:
        meta = self.meta()
        count = meta["count"]
        frames = np.memmap(self.dir / "frames.u8", dtype=np.uint8, mode="r", shape=(count, SIZE, SIZE, 3))
        times, positions = np.asarray(meta["times_s"]), np.asarray(meta["positions"])
        for lo in range(0, count, batch_size):
            hi = min(count, lo + batch_size)
            yield FrameBatch(np.array(frames[lo:hi]), times[lo:hi], positions[lo:hi])

    def report(self) -> DecodeReport:
        return DecodeReport(**self.meta()["report"])

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.glob("*")) if self.dir.exists() else 0

    # ---- writing ------------------------------------------------------------------------------------------
    @contextmanager
    def writer(self, expected_frames: int):
        """Yields a CacheWriter, or None when the entry would exceed the size limit or another process writes it.
        The entry appears only if the block finishes and `commit` was called."""
        if expected_frames * FRAME_BYTES > limit_bytes():
            yield None
            return
        self.root.mkdir(parents=True, exist_ok=True)
        lock = open(self.root / f"{self.key}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}-", dir=self.root))
        writer = CacheWriter(tmp)
        try:
            yield writer
            if writer.committed and not self.exists():
                os.replace(tmp, self.dir)
        finally:
            writer.close()
            shutil.rmtree(tmp, ignore_errors=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


class CacheWriter:
    def __init__(self, folder: Path):
        self.folder = folder
        self.file = open(folder / "frames.u8", "wb")
        self.times: list[float] = []
        self.positions: list[int] = []
        self.committed = False

    def add(self, batch: FrameBatch) -> None:
        self.file.write(np.ascontiguousarray(batch.frames).tobytes())
        self.times += batch.times_s.tolist()
        self.positions += batch.positions.tolist()

    def commit(self, report: DecodeReport) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        meta = {"count": len(self.positions), "times_s": self.times, "positions": self.positions,
                "report": {k: v for k, v in report.__dict__.items()}}
        (self.folder / "meta.json").write_text(json.dumps(meta))
        self.committed = True

    def close(self) -> None:
        self.file.close()
