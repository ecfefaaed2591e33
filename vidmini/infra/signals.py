"""SIGTERM stops vidmini the way Ctrl-C does.

`timeout`, Slurm and systemd send SIGTERM. Python's default for it kills the process on the spot, which skips the
cleanup that Ctrl-C gets (temporary cache folders, the report lock). Turning it into an exception in the main
thread makes both signals take the same path through every `finally`; only the exit code differs (128 + 15).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from vidmini.errors import INTERRUPTED, TERMINATED  # 130 and 143 (128 + the signal), what shells report


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a KeyboardInterrupt so that code cleaning up after Ctrl-C runs."""


_received = {"sigterm": False}  # typer turns the exception into a bare exit code 130, losing its type


def _raise_terminated(signum, frame) -> None:
    _received["sigterm"] = True
    raise Terminated()


def install() -> Callable[[], None]:
    """Route SIGTERM to `Terminated`; returns a function that puts the previous handler back (main may be called
    in-process, e.g. by tests, and must not leave its handler behind)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread
    _received["sigterm"] = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    return lambda: signal.signal(signal.SIGTERM, previous)


def interrupted(cause: BaseException | None) -> tuple[int, str]:
    """(exit code, message) for a stop by Ctrl-C or SIGTERM."""
    if isinstance(cause, Terminated) or _received["sigterm"]:
        return TERMINATED, "terminated"
    return INTERRUPTED, "interrupted"
