"""Exit codes and the one-line error contract (docs/design.md, CLI contract)."""

from __future__ import annotations

import sys
import traceback

OK, FAILED, USAGE, BAD_INPUT, MODEL_LOAD, OUT_OF_MEMORY, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130


class VidminiExit(Exception):
    """Stop with this exit code and message (already one line)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def exit_code_for(err: BaseException) -> int:
    from vidmini.video.probe import VideoError

    if isinstance(err, VidminiExit):
        return err.code
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(err, VideoError):
        return BAD_INPUT
    if type(err).__name__ == "ModelLoadError":
        return MODEL_LOAD
    if type(err).__name__ in ("DeviceOutOfMemory", "OutOfMemoryError"):  # ours, or torch's unhandled one
        return OUT_OF_MEMORY
    return FAILED


def report(err: BaseException, debug: bool) -> int:
    """Print one line on stderr (a traceback too with --debug); return the exit code."""
    code = exit_code_for(err)
    if debug:
        traceback.print_exception(err)
    if code == INTERRUPTED:
        message = "interrupted"
    elif code == FAILED:
        message = f"unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (run with --debug for details)"
    else:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
    print(f"vidmini: error: {message}", file=sys.stderr)
    return code
