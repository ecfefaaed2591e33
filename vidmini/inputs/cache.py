"""A cache of decoded frames, so that a second question about the same video does not decode it again.

What is cached is the question-independent input of the model: the sampled frames at the model's frame geometry
(336x336 squashed for LLaVA-Mini; uint8), keyed by the file's identity (path, size, mtime), the sampling plan and
the geometry (vidmini.inputs.video.frames.FrameGeometry). Everything after them (CLIP, pre-fusion) depends
on the question and is recomputed, so answers are identical to a fresh run. Frames do not depend on the model,
so the entry serves every model of the same frame geometry.

The cache is an optimisation, so it is never fatal: a folder that cannot be written, a full disk, a damaged
entry or a bad setting costs one warning and the video is decoded as if there were no cache.

- Entries are written to a private temp folder and renamed into place when complete, so an interrupted run
  leaves nothing half-written. A writer holds an exclusive lock on `<key>.lock` for as long as its temp folder
  exists; a temp folder whose lock is free belongs to a writer that was killed, and the next writer removes it.
- Every entry is verified before use: its metadata carries a checksum of itself, the frame file's size must
  match the frame count, and a digest of sampled frames must match. A damaged entry is removed and rebuilt.
- The whole cache (vidmini.inputs.cache_folder) stays under VIDMINI_CACHE_MAX_GB (default 8): least recently used
  entries are evicted to make room; an entry larger than the cap is not cached at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vidmini.inputs.cache_folder import (
    cache_root, folder_bytes, limit_bytes, make_room, reap_orphans, remove_entry, unlock, warn_once,
)
from vidmini.inputs.video.frames import SIZE, DecodeReport, FrameBatch, FrameGeometry

FRAME_BYTES = SIZE * SIZE * 3  # LLaVA-Mini's frames; other geometries: FrameGeometry.frame_bytes
SQUASHED_336 = FrameGeometry()  # LLaVA-Mini's frame geometry, the default
FORMAT = 2  # entries of another format are rebuilt
OTHER_FORMAT = "written by another version of vidmini"

def entry_key(path: str, plan_key: str, geometry: FrameGeometry = SQUASHED_336) -> str:
    stat = os.stat(path)
    ident = f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{plan_key}|{geometry.key()}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _cannot_write(root: Path, err: OSError) -> None:
    if root.exists() and not root.is_dir():
        why = f"{root} is a file, not a folder"
    elif getattr(err, "errno", None) == 28:  # ENOSPC
        why = f"the disk holding {root} is full"
    else:
        why = f"{root} cannot be written ({err.strerror or err})"
    warn_once(f"write:{root}", f"frame cache not used: {why}; answering without it (VIDMINI_CACHE_DIR moves it)")


# ---- verification -------------------------------------------------------------------------------------------
def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sample_digest(fd: int, count: int, frame_bytes: int = FRAME_BYTES) -> str:
    """A digest of the first, middle and last frames: catches a zeroed or rewritten file without reading GBs."""
    digest = hashlib.sha256()
    for index in sorted({0, count // 2, count - 1}):
        digest.update(os.pread(fd, frame_bytes, index * frame_bytes))
    return digest.hexdigest()


def verify(meta_bytes: bytes, frames: BinaryIO, frame_bytes: int = FRAME_BYTES) -> tuple[dict | None, str | None]:
    """(metadata, None) for a sound entry; (None, what is wrong) otherwise."""
    try:
        meta = json.loads(meta_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "meta.json is not valid JSON"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None, OTHER_FORMAT
    body = {k: v for k, v in meta.items() if k != "checksum"}
    if meta.get("checksum") != _checksum(body):
        return None, "meta.json does not match its checksum"
    count = meta["count"]
    if count < 1 or len(meta["times_s"]) != count or len(meta["positions"]) != count:
        return None, "meta.json lists a wrong number of frames"
    size = os.fstat(frames.fileno()).st_size
    if size != count * frame_bytes:
        return None, f"frames.u8 holds {size} bytes, {count * frame_bytes} expected"
    if _sample_digest(frames.fileno(), count, frame_bytes) != meta["frames_digest"]:
        return None, "frames.u8 does not match its checksum"
    return meta, None


@dataclass
class _Entry:
    meta: dict
    frames: BinaryIO  # held open: an eviction by another process cannot pull the frames from under a reader


# ---- one entry -----------------------------------------------------------------------------------------------
class FrameCache:
    def __init__(self, path: str, plan_key: str, root: Path | None = None, geometry: FrameGeometry = SQUASHED_336):
        self.root = root or cache_root()
        self.source = os.path.realpath(path)
        self.plan_key = plan_key
        self.geometry = geometry
        self.key = entry_key(path, plan_key, geometry)
        self.dir = self.root / self.key
        self._entry: _Entry | None = None

    # ---- reading ------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        """A sound entry is there. A damaged one is removed with a warning, so the video is decoded again."""
        if self._entry is None and limit_bytes() is not None:
            self._entry = self._open()
        return self._entry is not None

    def _open(self) -> _Entry | None:
        try:
            if not self.dir.is_dir():
                return None
            meta_bytes = (self.dir / "meta.json").read_bytes()
            frames = open(self.dir / "frames.u8", "rb")
        except FileNotFoundError as err:
            self._discard(f"{Path(err.filename).name} is missing")
            return None
        except OSError as err:
            warn_once(f"read:{self.root}", f"cannot read the frame cache in {self.root} ({err.strerror or err}); "
                                           "decoding instead")
            return None
        try:
            meta, problem = verify(meta_bytes, frames, self.geometry.frame_bytes)
        except (OSError, KeyError, TypeError) as err:
            meta, problem = None, f"unreadable ({err})"
        if problem is not None:
            frames.close()
            self._discard(problem)
            return None
        try:
            os.utime(self.dir)  # the folder's mtime is the entry's last use, for least-recently-used eviction
        except OSError:
            pass  # a read-only cache still serves its entries
        return _Entry(meta, frames)

    def _discard(self, problem: str) -> None:
        # Not once-only: each damaged entry is news (and is gone after this, so it cannot repeat).
        if problem == OTHER_FORMAT:  # not damage: an upgrade; say so without alarming anyone
            message = f"frame cache entry for {self.source} was {OTHER_FORMAT}; decoding again"
        else:
            message = f"warning: frame cache entry for {self.source} is damaged ({problem}); removing it and decoding again"
        print(f"vidmini: {message}", file=sys.stderr, flush=True)
        remove_entry(self.dir)

    def meta(self) -> dict:
        """The entry's metadata (call after exists() said yes)."""
        assert self._entry is not None, "meta() of an entry that does not exist"
        return self._entry.meta

    def batches(self, batch_size: int) -> Iterator[FrameBatch]:
        meta = self.meta()
        count = meta["count"]
        frames = np.memmap(self._entry.frames, dtype=np.uint8, mode="r", shape=(count, *self.geometry.frame_shape))
        times, positions = np.asarray(meta["times_s"]), np.asarray(meta["positions"])
        for lo in range(0, count, batch_size):
            hi = min(count, lo + batch_size)
            yield FrameBatch(np.array(frames[lo:hi]), times[lo:hi], positions[lo:hi])

    def report(self) -> DecodeReport:
        return DecodeReport(**self.meta()["report"])

    @property
    def size_bytes(self) -> int:
        return folder_bytes(self.dir)

    # ---- writing ------------------------------------------------------------------------------------------
    @contextmanager
    def writer(self, expected_frames: int):
        """Yields a CacheWriter, or None when nothing will be cached: the entry would exceed the cap, another
        process writes it, or the cache cannot be written (warned once). The entry appears only if the block
        finishes and `commit` succeeded. Trouble with the cache never raises out of here."""
        lock = self._lock(expected_frames)
        if lock is None:
            yield None
            return
        writer = None
        try:
            writer = self._new_writer()
            yield writer
            if writer is not None and writer.committed:
                self._publish(writer)
        finally:
            if writer is not None:
                writer.close()
            # By name, not through `writer`: a Ctrl-C or SIGTERM that lands between mkdtemp and the assignment
            # leaves a folder that no variable names. Holding the key's lock, every temp folder of the key is ours.
            for temp in self.root.glob(f".{self.key}-*"):
                shutil.rmtree(temp, ignore_errors=True)
            unlock(lock)

    def _lock(self, expected_frames: int):
        """The key's lock, held while this process writes the entry; None when nothing will be cached."""
        limit = limit_bytes()
        if limit is None or expected_frames * self.geometry.frame_bytes > limit:
            return None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / f"{self.key}.lock", "w")
        except OSError as err:
            _cannot_write(self.root, err)
            return None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    def _new_writer(self) -> CacheWriter | None:
        try:
            reap_orphans(self.root, own_key=self.key)
            folder = Path(tempfile.mkdtemp(prefix=f".{self.key}-{os.getpid()}-", dir=self.root))
            return CacheWriter(folder, self)
        except OSError as err:
            _cannot_write(self.root, err)
            return None

    def _publish(self, writer: CacheWriter) -> None:
        try:
            make_room(self.root, writer.bytes, keep=self.key)
            if self.dir.exists():
                return  # a damaged entry we could not remove: keep answering, just without caching
            os.replace(writer.folder, self.dir)
        except OSError as err:
            _cannot_write(self.root, err)


class CacheWriter:
    """Frames go to a temp folder as they stream by; a failed write (full disk) stops caching, not the answer."""

    def __init__(self, folder: Path, cache: FrameCache):
        self.folder = folder
        self.cache = cache
        self.file = open(folder / "frames.u8", "wb")
        self.times: list[float] = []
        self.positions: list[int] = []
        self.bytes = 0
        self.committed = False
        self.failed = False

    def add(self, batch: FrameBatch) -> None:
        if self.failed:
            return
        try:
            data = np.ascontiguousarray(batch.frames).tobytes()
            self.file.write(data)
        except OSError as err:
            self._fail(err)
            return
        self.bytes += len(data)
        self.times += batch.times_s.tolist()
        self.positions += batch.positions.tolist()

    def commit(self, report: DecodeReport) -> None:
        if self.failed or not self.positions:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            with open(self.folder / "frames.u8", "rb") as f:
                digest = _sample_digest(f.fileno(), len(self.positions), self.cache.geometry.frame_bytes)
            body = {"format": FORMAT, "source": self.cache.source, "plan_key": self.cache.plan_key,
                    "count": len(self.positions), "times_s": self.times, "positions": self.positions,
                    "report": dict(report.__dict__), "frames_digest": digest, "created": time.time()}
            with open(self.folder / "meta.json", "w") as f:
                f.write(json.dumps({**body, "checksum": _checksum(body)}))
                f.flush()
                os.fsync(f.fileno())
            self.bytes = folder_bytes(self.folder)
            self.committed = True
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        self.failed = True
        self.close()
        _cannot_write(self.cache.root, err)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # closing flushes; on a full disk that fails too, and the folder is removed anyway
