"""The frame cache's folder as a whole (vidmini.inputs.cache holds one entry's reading and writing): where it is,
its size cap, what is in it, least-recently-used eviction, `vidmini cache clear`, and the temp folders of killed
writers. A writer holds `<key>.lock` for as long as its temp folder exists, so a free lock means a dead writer."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from vidmini.inputs.paths import user_cache_dir

DEFAULT_LIMIT_GB = 8.0
_KEY = re.compile(r"[0-9a-f]{20}")  # entry_key's shape: anything else in the cache folder is not ours to touch

_warned: set[str] = set()


def warn_once(kind: str, message: str) -> None:
    """One warning per kind of trouble per process: a full disk must not print a line per frame batch."""
    if kind not in _warned:
        _warned.add(kind)
        print(f"vidmini: warning: {message}", file=sys.stderr, flush=True)


def reset_warnings() -> None:
    """For callers that run several commands in one process (tests)."""
    _warned.clear()


def cache_root() -> Path:
    if os.environ.get("VIDMINI_CACHE_DIR"):
        return Path(os.environ["VIDMINI_CACHE_DIR"])
    return user_cache_dir() / "frames"


def limit_bytes() -> int | None:
    """The total size cap, or None (cache off, warned once) when VIDMINI_CACHE_MAX_GB is not a size."""
    raw = os.environ.get("VIDMINI_CACHE_MAX_GB")
    if raw is None:
        return int(DEFAULT_LIMIT_GB * 1024**3)
    try:
        gb = float(raw)
    except ValueError:
        gb = math.nan
    if not math.isfinite(gb) or gb < 0:
        warn_once("limit", f"VIDMINI_CACHE_MAX_GB={raw!r} is not a size in GB (e.g. 8 or 0.5); "
                           "answering without the frame cache")
        return None
    return int(gb * 1024**3)


def folder_bytes(folder: Path) -> int:
    try:
        return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    except OSError:
        return 0


def unlock(lock) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        lock.close()


@contextmanager
def _key_lock_if_free(root: Path, key: str):
    """Yields True while holding `key`'s writer lock, False when another process holds it."""
    try:
        lock = open(root / f"{key}.lock", "a")
    except OSError:
        yield False
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        yield False
        return
    try:
        yield True
    finally:
        unlock(lock)


def remove_entry(folder: Path) -> None:
    """Rename out of the way first, so no reader ever sees a half-removed entry under the real name."""
    trash = folder.with_name(f".{folder.name}-trash-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.replace(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def reap_orphans(root: Path, own_key: str | None = None) -> int:
    """Remove temp folders whose writer is gone (killed by SIGKILL or a power cut). A writer holds its key's
    lock as long as its temp folder exists, so a folder whose lock is free has no owner. Returns how many."""
    removed = 0
    try:
        temps = [p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()]
    except OSError:
        return 0
    for temp in temps:
        key = temp.name[1:].split("-", 1)[0]
        if not _KEY.fullmatch(key):
            continue
        if key == own_key:  # we hold this key's lock: any temp folder of it is a dead writer's
            shutil.rmtree(temp, ignore_errors=True)
            removed += 1
            continue
        with _key_lock_if_free(root, key) as free:
            if free:
                shutil.rmtree(temp, ignore_errors=True)
                removed += 1
    return removed


def entries(root: Path | None = None) -> list[dict]:
    """Every entry: key, source file, frames, bytes, last use (epoch s); least recently used first."""
    root = root or cache_root()
    found = []
    try:
        folders = [p for p in root.iterdir() if _KEY.fullmatch(p.name) and p.is_dir()]
    except OSError:
        return []
    for folder in folders:
        try:
            meta = json.loads((folder / "meta.json").read_bytes())
            source, count = meta.get("source"), meta.get("count")
        except (OSError, ValueError, AttributeError):
            source, count = None, None
        try:
            used = folder.stat().st_mtime
        except OSError:
            continue
        found.append({"key": folder.name, "source": source, "frames": count, "bytes": folder_bytes(folder),
                      "last_used": used})
    return sorted(found, key=lambda e: e["last_used"])


def make_room(root: Path, incoming: int, keep: str | None = None) -> list[dict]:
    """Evict least recently used entries until `incoming` more bytes fit under the cap. Returns the evicted."""
    limit = limit_bytes()
    if limit is None:
        return []
    present = [e for e in entries(root) if e["key"] != keep]
    total = sum(e["bytes"] for e in present)
    evicted = []
    for entry in present:
        if total + incoming <= limit:
            break
        remove_entry(root / entry["key"])
        total -= entry["bytes"]
        evicted.append(entry)
    if evicted:
        freed = sum(e["bytes"] for e in evicted) / 1e6
        print(f"vidmini: frame cache: evicted {len(evicted)} least recently used entr{'y' if len(evicted) == 1 else 'ies'}"
              f" ({freed:.1f} MB) to stay under VIDMINI_CACHE_MAX_GB", file=sys.stderr, flush=True)
    return evicted


def clear(root: Path | None = None, older_than_s: float | None = None) -> list[dict]:
    """Remove entries (those unused for `older_than_s` seconds, or all) and dead writers' temp folders.
    Returns the removed entries."""
    root = root or cache_root()
    now = time.time()
    removed = []
    for entry in entries(root):
        if older_than_s is not None and now - entry["last_used"] < older_than_s:
            continue
        with _key_lock_if_free(root, entry["key"]) as free:
            if free:  # never pull an entry from under a process that is (re)writing it
                remove_entry(root / entry["key"])
                removed.append(entry)
    reap_orphans(root)
    for lock in root.glob("*.lock") if root.is_dir() else []:
        if _KEY.fullmatch(lock.stem) and not (root / lock.stem).exists():
            with _key_lock_if_free(root, lock.stem) as free:
                if free:
                    lock.unlink(missing_ok=True)
    return removed


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '3600s' or a bare number of days, in seconds. ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:], None)
    number = float(text[:-1] if scale else text)
    if not math.isfinite(number) or number < 0:
        raise ValueError(text)
    return number * (scale or 86400)
