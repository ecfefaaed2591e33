"""Output paths: checked before any work, never overwriting a file that is not ours, one writer per report.

A user's files are sacred. A report or a Markdown rendering is replaced only when its content says vidmini wrote
it (never judged by the file's extension), and every output path is tried before the first video is touched,
so a typo costs one line and exit 2 instead of a lost file or hours of work thrown away at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidmini.errors import UsageError
from vidmini.inputs.paths import special_kind

# The first line of every Markdown file we render; also how we recognise one as ours.
MARKDOWN_MARKER = "<!-- vidmini summarize report: rendered from"
# Markdown rendered before the marker existed: a title, a blank line, then this exact count line.
_LEGACY_MARKDOWN = re.compile(r"# Video summaries\n\n\d+ file\(s\), \d+ summarized, \d+ failed; [0-9.]+ h of video\.\n")
_FIRST_LINE_LIMIT = 16 * 1024**2  # a record is a few KiB; a first line longer than this is not one of ours
RECORD_KEYS = ("path", "prompt_key", "error")  # every summarize record has these, failed ones included


def new_record(path: str, prompt_key: str, error: str | None = None) -> dict:
    """A summarize record's first keys (RECORD_KEYS), in the order a torn first line is recognised by; the
    summary's fields, or the file's identity, follow."""
    return dict(zip(RECORD_KEYS, (path, prompt_key, error)))


def _fail(message: str) -> None:
    raise UsageError(message)


# ---- can we write there? --------------------------------------------------------------------------------------
def check_writable(path: Path, option: str) -> None:
    """Exit 2 unless a file can be created or replaced at `path` (written as temp file + rename beside it).
    It tries for real rather than asking os.access, which says yes to root on a read-only folder."""
    path = Path(path)
    if path.is_dir():
        _fail(f"{option} {path} is a folder; give a file name")
    kind = special_kind(path.stat().st_mode) if path.exists() else None
    if kind is not None:  # opening a FIFO to write would block until a reader appears
        _fail(f"{option} {path} is {kind}; give a file name")
    folder = path.parent
    if not folder.exists():
        _fail(f"{option} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        _fail(f"{option} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        _fail(f"{option} {path}: cannot write in {folder} ({err.strerror or err})")
    if path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opening for append changes nothing
        except OSError as err:
            _fail(f"{option} {path}: cannot write it ({err.strerror or err})")


# ---- is it ours? ----------------------------------------------------------------------------------------------
def is_report(path: Path) -> bool:
    """True for a missing or empty file and for a summarize report, recognised by its first record (the record
    schema), or by a first record torn by a kill (our records always start with '{"path": ')."""
    try:
        with open(path, "rb") as f:
            first = f.readline(_FIRST_LINE_LIMIT)
    except FileNotFoundError:
        return True
    if not first.strip():
        return os.path.getsize(path) == len(first)  # empty, or one blank line: nothing there to lose
    try:
        record = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return not first.endswith(b"\n") and first.startswith(b'{"path": ')
    return isinstance(record, dict) and all(k in record for k in RECORD_KEYS) and isinstance(record["path"], str)


def is_our_markdown(path: Path) -> bool:
    """True for a missing or empty file and for Markdown that `summarize --markdown` rendered."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return True
    return not head.strip() or head.startswith(MARKDOWN_MARKER) or bool(_LEGACY_MARKDOWN.match(head))


PLOT_SOFTWARE = "vidmini memory plot"  # the PNG's Software text chunk: how we recognise a plot as ours
_PNG = b"\x89PNG\r\n\x1a\n"


def is_our_plot(path: Path, software: str = PLOT_SOFTWARE) -> bool:
    """True for a missing or empty file and for a PNG that vidmini wrote with this Software tEXt chunk (it
    precedes the image data): `--memory-plot`'s by default, `--evidence-plot`'s with evidence.PLOT_SOFTWARE."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except FileNotFoundError:
        return True
    return not head or (head.startswith(_PNG) and b"tEXtSoftware\x00" + software.encode() in head)


def is_our_snapshot(path: Path) -> bool:
    """True for a missing or empty file and for a CUDA allocator snapshot (a pickle holding "device_traces").
    Judged by bytes, never by unpickling a file we did not write. The key follows every memory segment, so a
    large snapshot is read through (in blocks) rather than judged by its head."""
    key, block = b"device_traces", 8 * 1024**2
    try:
        with open(path, "rb") as f:
            data = f.read(block)
            if not data:
                return True
            if data[:1] != b"\x80":
                return False
            while data:
                if key in data:
                    return True
                more = f.read(block)
                data = data[-len(key):] + more if more else b""  # the key may straddle two blocks
    except FileNotFoundError:
        return True
    return False


def check_memory_outputs(plot: Path | None, snapshot: Path | None) -> None:
    """--memory-plot and --memory-snapshot: writable, and never replacing a file that is not ours."""
    for option, path, ours, what in (("--memory-plot", plot, is_our_plot, "a vidmini memory plot"),
                                     ("--memory-snapshot", snapshot, is_our_snapshot, "a CUDA memory snapshot")):
        if path is None:
            continue
        check_writable(path, option)
        if path.is_file() and not ours(path):
            _fail(f"{option} {path} exists and is not {what}; not touching it (choose another file name)")


def check_evidence_plot(path: Path | None) -> None:
    """--evidence-plot: writable, and never replacing a file that is not an evidence plot vidmini wrote."""
    from vidmini.engine.evidence import PLOT_SOFTWARE as EVIDENCE_PLOT

    if path is None:
        return
    check_writable(path, "--evidence-plot")
    if path.is_file() and not is_our_plot(path, EVIDENCE_PLOT):
        _fail(f"--evidence-plot {path} exists and is not a vidmini evidence plot; not touching it "
              "(choose another file name)")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_summarize_outputs(out: Path, markdown: Path | None, render_only: bool = False) -> None:
    """Every check on --out and --markdown, before any work. `render_only`: only the Markdown is written."""
    if markdown is not None and _same_file(out, markdown):
        _fail(f"--out and --markdown are the same file ({out}); the Markdown would replace the report")
    if render_only:
        if out.is_dir():
            _fail(f"--out {out} is a folder, not a report")
    else:
        check_writable(out, "--out")
    if out.is_file() and not is_report(out):
        _fail(f"--out {out} exists and is not a vidmini report; not touching it (choose another file name)")
    if markdown is not None:
        check_writable(markdown, "--markdown")
        if not is_our_markdown(markdown):
            _fail(f"--markdown {markdown} exists and was not written by vidmini; not touching it "
                  "(choose another file name)")


# ---- one writer per report -------------------------------------------------------------------------------------
def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextmanager
def report_lock(out: Path) -> Iterator[None]:
    """Hold the report's lock, or exit 2 at once when another process holds it. A second run is refused rather
    than queued: a batch can take hours, and a command that silently waits that long looks hung.

    The lock is an flock on a file beside the report (the report itself is replaced on rewrite, so its inode
    cannot carry a lock). The kernel drops it when its holder dies, even by SIGKILL."""
    path = lock_path(Path(out))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            _fail(f"{out} is being written by another vidmini summarize (pid {holder}); "
                  "wait for it to finish or give another --out")
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the previous holder removed the file while we waited for its lock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        # Unlink while still holding the lock, so a process that opened the old file re-checks and retries.
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
