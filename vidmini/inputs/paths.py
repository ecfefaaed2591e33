"""Input paths, checked before anything opens them (and before torch is imported, so a typo costs well under a
second): a URL, a FIFO, a socket, a device or an unreadable file is one line, never a hang in open() or a file
read by the wrong reader. Paths are taken as typed: never normalised, so what the error names is what was given.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from vidmini.errors import BadInput, UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def user_cache_dir() -> Path:
    """vidmini's folder in the user's cache ($XDG_CACHE_HOME/vidmini, else ~/.cache/vidmini): decoded frames,
    the demo model's prepared LLM."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vidmini"


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def is_url(path: str) -> bool:
    return _URL.match(path) is not None


def check_not_url(path: str, what: str = "a local file") -> None:
    """URLs are not read: vidmini caches frames and keys reports by a file's content, which a stream does not
    have. Refused as such rather than taken as a path (a path would lose a slash and say "no such file")."""
    if is_url(path):
        raise UsageError(f"{path}: URLs are not supported; give {what} (download it first, e.g. curl -O URL)")


def special_kind(mode: int) -> str | None:
    """'a FIFO (named pipe)', 'a socket', ... for what is neither a regular file nor a folder; else None."""
    return next((name for test, name in _KINDS if test(mode)), None)


def check_input_file(path: str, what: str = "video file") -> os.stat_result:
    """Exit 2 for a URL; exit 3 for a path that is missing, a folder, a FIFO/socket/device, unreadable or empty.
    Only stat() and access() are called: opening a FIFO would block until a writer appears."""
    check_not_url(path, f"the path of a {what}")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as err:
        raise BadInput(f"{path}: cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{path}: is a folder, not a {what}")
    kind = special_kind(info.st_mode)
    if kind is not None:
        raise BadInput(f"{path}: is {kind}, not a {what}")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{path}: cannot be read (permission denied)")
    if info.st_size == 0:
        raise BadInput(f"{path}: the file is empty")
    return info
