"""The summarize report: a JSON Lines file, one record per video, and its Markdown rendering.

Records are appended one complete line per write and fsynced; a rewrite replaces the file atomically. Only the
process holding the report's lock (outputs.report_lock) writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vidmini.errors import WriteFailed


class Report:
    """The JSON Lines report. Only the process holding its lock (outputs.report_lock) writes it."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._stamp: tuple | None = None  # the file as we last left it; anything else means another writer

    def _current_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def read(self) -> list[dict]:
        """Complete, parseable records; a torn last line (a kill mid-write) is ignored."""
        self._stamp = self._current_stamp()
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(errors="replace").split("\n"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "path" in record:
                records.append(record)
        return records

    def rewrite(self, records: list[dict]) -> None:
        """Replace the report atomically (temp file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._stamp = self._current_stamp()

    def append(self, record: dict) -> bool:
        """One complete line in one write, flushed and synced before returning. If the file changed since we
        last wrote or read it (a writer that ignored the lock), re-read it first and write nothing when it
        already holds this file's record for this prompt: never two records for one file. Returns whether
        the record was written."""
        if self._stamp != self._current_stamp() and any(_same_record(r, record) for r in self.read()):
            return False
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line torn by a kill: the record must start a line of its own to be read
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as err:
                os.ftruncate(fd, size)  # no torn record left behind (a full disk mid-line)
                raise WriteFailed(f"cannot write the report {self.path}: {err.strerror or err}; every record "
                                  "written before is kept: free space and run the same command again to resume") \
                    from err
        finally:
            os.close(fd)
        self._stamp = self._current_stamp()
        return True


def _same_record(a: dict, b: dict) -> bool:
    return (a.get("path") == b.get("path") and a.get("prompt_key") == b.get("prompt_key")
            and a.get("content_hash") == b.get("content_hash") and a.get("size") == b.get("size"))


# ---- Markdown ----------------------------------------------------------------------------------------------------
def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def evidence_links(path: str, moments: list[dict], duration_s: float | None) -> str:
    """Each moment as a link into the video at that time (a media fragment, #t=start,end, which browsers and
    most players open at that point), with its share of the answer's attention."""
    from urllib.parse import quote

    from vidmini.engine.evidence import clock

    hours = (duration_s or 0) >= 3600
    links = []
    for m in moments:
        start, end = clock(m["start_s"], hours), clock(m["end_s"], hours)
        label = start if start == end else f"{start}–{end}"
        target = f"{quote(path)}#t={m['start_s']:g}" + (f",{m['end_s']:g}" if m["end_s"] > m["start_s"] else "")
        links.append(f"[{label}](<{target}>) ({m['score']:.0%})")
    return ", ".join(links)


def render_markdown(records: list[dict], source: str = "") -> str:
    from vidmini.infra.outputs import MARKDOWN_MARKER

    ok = [r for r in records if not r.get("error")]
    hours = sum(r.get("duration_s") or 0 for r in ok) / 3600
    lines = [f"{MARKDOWN_MARKER} {source}; rewritten on every run -->", "# Video summaries", "",
             f"{len(records)} file(s), {len(ok)} summarized, {len(records) - len(ok)} failed; {hours:.2f} h of video.", ""]
    for r in sorted(records, key=lambda r: r["path"]):  # by path: the same page whichever worker finished first
        lines += [f"## {r['path']}", ""]
        if r.get("error"):
            lines += [f"**Error:** {r['error']}", ""]
            continue
        lines += [f"*{clock(r['duration_s'])} · {r['frames_used']} frames*", "", r.get("summary", ""), ""]
        if r.get("chapters"):
            lines += ["### Chapters", ""]
            lines += [f"- **{clock(c['start_s'])}–{clock(c['end_s'])}** {c['summary']}" for c in r["chapters"]]
            lines.append("")
        for qa in r.get("answers", []):
            lines += [f"**Q:** {qa['question']}  ", f"**A:** {qa['answer']}" + ("  " if qa.get("evidence") else "")]
            if qa.get("evidence"):
                lines.append(f"*Evidence:* {evidence_links(r['path'], qa['evidence'], r.get('duration_s'))}")
            lines.append("")
        for w in r.get("warnings", []):
            lines.append(f"> note: {w}")
        if r.get("warnings"):
            lines.append("")
    return "\n".join(lines)


def write_markdown(report_path: str, markdown_path: str) -> int:
    records = Report(report_path).read()
    tmp = Path(markdown_path).with_name(f".{Path(markdown_path).name}.tmp")
    tmp.write_text(render_markdown(records, os.path.basename(report_path).replace("--", "- -")))
    os.replace(tmp, markdown_path)
    return len(records)

