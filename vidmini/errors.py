"""Exit codes and the one-line error contract (docs/architecture.md, CLI contract).

Every error a user can cause is a `VidminiError` subclass carrying its exit code; the CLI prints its message as one
line. This module imports nothing of vidmini (everything imports it), so it can never close an import cycle.
"""

from __future__ import annotations

import sys
import traceback

OK, FAILED, USAGE, BAD_INPUT, MODEL_LOAD, OUT_OF_MEMORY, INTERRUPTED, TERMINATED = 0, 1, 2, 3, 4, 5, 130, 143


class VidminiError(Exception):
    """An error meant for the user: the message is one line that says what is wrong and how to fix it."""

    code = FAILED


class UsageError(VidminiError):
    """The command line asks for something impossible: a bad option value, a path we must not write."""

    code = USAGE


class BadInput(VidminiError):
    """The input cannot be used: missing, unreadable, no video stream, nothing decodable."""

    code = BAD_INPUT


class ModelLoadError(VidminiError):
    """The model cannot be loaded (offline and not cached included)."""

    code = MODEL_LOAD


class DeviceOutOfMemory(VidminiError):
    """Even the smallest batch and chunk do not fit on the device."""

    code = OUT_OF_MEMORY


class WriteFailed(VidminiError):
    """An output could not be written mid-run (disk full, quota, I/O error); what was written before is intact."""

    code = FAILED


def exit_code_for(err: BaseException) -> int:
    if isinstance(err, VidminiError):
        return err.code
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED
    torch = sys.modules.get("torch")  # only loaded torch can have raised its own out-of-memory error
    if torch is not None and isinstance(err, torch.OutOfMemoryError):
        return OUT_OF_MEMORY
    return FAILED


def first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


def describe(err: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for any error."""
    code = exit_code_for(err)
    if code == INTERRUPTED:
        return code, "interrupted"
    if code == FAILED and not isinstance(err, VidminiError):
        return code, f"unexpected {type(err).__name__}: {first_line(err)} (run with --debug for details)"
    return code, first_line(err)


def report(err: BaseException, debug: bool) -> tuple[int, str]:
    """Print one line on stderr (a traceback too with --debug); return (exit code, message)."""
    code, message = describe(err)
    if debug:
        traceback.print_exception(err)
    print(f"vidmini: error: {message}", file=sys.stderr)
    return code, message
