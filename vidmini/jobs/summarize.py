"""`vidmini summarize`: summaries of whole folders of video, resumable, nothing lost.

The report is JSON Lines, one record per file, each appended in one write and fsynced as soon as its file is
done. A rerun first repairs the report (a line torn by a kill is dropped), keeps the records whose file and
prompt are unchanged, drops those it will redo (so there are never two records for a file), and processes
the rest. Chapters come from the same single pass over the frames as the overall summary.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from vidmini.infra.outputs import new_record
from vidmini.jobs.report import Report

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".3gp", ".ogv", ".ivf", ".y4m", ".mxf"}
NOT_VIDEO_SUFFIXES = {".txt", ".md", ".json", ".jsonl", ".py", ".csv", ".log", ".srt", ".vtt", ".nfo", ".jpg",
                      ".jpeg", ".png", ".gif", ".pdf", ".html", ".xml", ".yaml", ".yml", ".lock", ".sh"}
SUMMARY_PROMPT = "Summarize this video in a few sentences: what happens, who or what is in it, and where."
CHAPTER_PROMPT = "Summarize this part of the video in one or two sentences."
AUTO_CHAPTER_ABOVE_MIN = 20.0
AUTO_CHAPTER_MIN = 10.0


@dataclass
class SummarizeOptions:
    questions: list[str] = field(default_factory=list)
    chapter_minutes: float | None = None  # None: AUTO_CHAPTER_MIN for videos over AUTO_CHAPTER_ABOVE_MIN minutes
    glob: str | None = None
    recursive: bool = True
    force: bool = False
    fail_fast: bool = False
    fps: float = 1.0
    max_frames: int | None = None
    decoder: str = "auto"
    max_new_tokens: int = 512
    batch_size: int | None = None
    profile_memory: bool = False
    model_name: str = ""
    outputs: tuple[str, ...] = ()  # resolved paths of the report, its lock and its Markdown: never inputs
    max_question_tokens: int | None = None  # --question longer than this is refused (None: ask's default)
    evidence: int = 0  # moments per --question answer (0: none; the engine's evidence option must be on)

    def prompt_key(self) -> str:
        """Records made with another prompt, sampling or model are redone (and without evidence, when it is
        asked for now)."""
        ident = [SUMMARY_PROMPT, CHAPTER_PROMPT, self.questions, self.chapter_minutes, self.fps, self.max_frames,
                 self.max_new_tokens, self.model_name] + ([self.evidence] if self.evidence else [])
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


# ---- discovery ---------------------------------------------------------------------------------------------
def looks_like_video(path: Path) -> bool:
    """By extension when it says so; otherwise by opening it (a video with an odd name still counts)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix in NOT_VIDEO_SUFFIXES or path.name.startswith("."):
        return False
    try:
        import av

        with av.open(str(path)) as container:
            return any(not (s.disposition & av.stream.Disposition.attached_pic) for s in container.streams.video)
    except Exception:  # noqa: BLE001  anything FFmpeg cannot open is simply not a video
        return False


def discover(paths: list[str], glob: str | None = None, recursive: bool = True,
             exclude: tuple[str, ...] = ()) -> list[str]:
    """Video files under `paths`, each once, by resolved absolute path (so `x.mkv`, `./x.mkv` and `/abs/x.mkv`
    are one file whatever the working directory), in a stable (sorted) order; `exclude`d paths (our own outputs,
    whatever their names) never."""
    found: set[str] = set()
    for given in paths:
        root = Path(given)
        if root.is_file():
            found.add(os.path.realpath(root))
            continue
        if not root.is_dir():
            found.add(os.path.realpath(root))  # reported as an error record ("no such file")
            continue
        walk = root.rglob("*") if recursive else root.glob("*")
        for path in walk:
            if not path.is_file():
                continue
            if glob and not (fnmatch.fnmatch(path.name, glob) or fnmatch.fnmatch(str(path.relative_to(root)), glob)):
                continue
            if looks_like_video(path):
                found.add(os.path.realpath(path))
    return sorted(found - set(exclude))


def find_videos(paths: list[str], glob: str | None = None, recursive: bool = True,
                exclude: tuple[str, ...] = ()) -> list[str]:
    """`discover`, saying which folders held no video; exit 3 when none held any (no report is created)."""
    from vidmini.errors import BadInput

    found: set[str] = set()
    empty = []
    for given in paths:
        files = discover([given], glob, recursive, exclude)
        if not files:
            empty.append(str(given))
        found.update(files)
    suffix = f" matching {glob!r}" if glob else ""
    if not found:
        raise BadInput(f"no videos found under {', '.join(empty)}{suffix}")
    for folder in empty:
        print(f"vidmini: no videos found under {folder}{suffix}", file=sys.stderr)
    return sorted(found)


def file_identity(path: str, block: int = 1 << 16) -> dict:
    """Size, mtime and a hash of three sampled blocks (start, middle, end): cheap even for huge files."""
    stat = os.stat(path)
    digest = hashlib.sha1(str(stat.st_size).encode())
    with open(path, "rb") as f:
        for offset in (0, max(0, stat.st_size // 2 - block // 2), max(0, stat.st_size - block)):
            f.seek(offset)
            digest.update(f.read(block))
    return {"size": stat.st_size, "mtime": stat.st_mtime, "content_hash": digest.hexdigest()[:20]}


def _record_file(record: dict, by_name: dict[str, list[str]]) -> str:
    """The discovered file a record is about. Records hold resolved absolute paths; older ones may hold the path
    as typed (relative to a working directory we do not know): those match a file of the same name and content."""
    path = record["path"]
    if os.path.isabs(path):
        return os.path.realpath(path)
    for candidate in by_name.get(os.path.basename(path), []):
        if _same_identity(record, candidate):
            return candidate
    return path


def plan_work(files: list[str], report: Report, options: SummarizeOptions) -> tuple[list[str], int, int]:
    """Files still to do; the report is rewritten without records that are stale, torn, duplicated or about to
    be redone. Returns (todo, number skipped as already done, how many of those failed in an earlier run)."""
    key = options.prompt_key()
    existing = report.read()
    keep, done = [], set()
    wanted = set(files)
    by_name: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(os.path.basename(f), []).append(f)
    earlier_failed = 0
    for record in existing:
        path = _record_file(record, by_name)
        if path in done:
            continue  # a duplicate (an older version wrote one per spelling of the path): keep the first
        fresh = (path in wanted and not options.force and record.get("prompt_key") == key
                 and os.path.exists(path) and _same_identity(record, path))
        if fresh or path not in wanted:
            keep.append({**record, "path": path} if fresh else record)
            done.add(path)
            earlier_failed += bool(fresh and record.get("error"))
    if len(keep) != len(existing) or report.path.exists():
        report.rewrite(keep)
    todo = [f for f in files if f not in done]
    return todo, len(files) - len(todo), earlier_failed


def _same_identity(record: dict, path: str) -> bool:
    try:
        ident = file_identity(path)
    except OSError:
        return False
    return all(record.get(k) == ident[k] for k in ("size", "content_hash")) and \
        abs(record.get("mtime", 0) - ident["mtime"]) < 1e-3


# ---- one file --------------------------------------------------------------------------------------------------
def chapter_ranges(times_s, duration_s: float, minutes: float | None) -> list[tuple[int, int, float, float]]:
    """(first frame, end frame, start s, end s) per chapter of `minutes`, from the sampled times."""
    import numpy as np

    if minutes is None:
        if duration_s <= AUTO_CHAPTER_ABOVE_MIN * 60:
            return []
        minutes = AUTO_CHAPTER_MIN
    if minutes <= 0:
        return []
    length = minutes * 60
    count = max(1, int(np.ceil(duration_s / length - 1e-9)))
    # Each frame's chapter, from the frames (sorted in time): never a loop or an array over empty chapters, so a
    # tiny --chapter-minutes costs at most one chapter per frame.
    chapter = np.minimum(np.floor(np.asarray(times_s) / length).astype(np.int64), count - 1)
    out = []
    for k in np.unique(chapter):
        lo, hi = np.searchsorted(chapter, [k, k + 1])
        out.append((int(lo), int(hi), int(k) * length, min(duration_s, (int(k) + 1) * length)))
    return out


def summarize_file(engine, path: str, options: SummarizeOptions, bar=None) -> dict:
    from vidmini.jobs.ask import Progress, run_queries
    from vidmini.engine.evidence import Evidence
    from vidmini.engine.engine import Query
    from vidmini.inputs.sources import Sampling, open_video, plan_video
    from vidmini.inputs.video import StreamOptions, VideoError

    started = time.monotonic()
    record = new_record(path, options.prompt_key())
    try:
        record.update(file_identity(path))
    except OSError as err:
        return {**record, "error": f"{path}: {err.strerror or err}"}
    try:
        sampling = Sampling("time", options.fps, options.max_frames)
        prompt_tokens = max(len(engine.prompt_ids(q)) for q in [SUMMARY_PROMPT, CHAPTER_PROMPT, *options.questions])
        planned = plan_video(path, sampling)
        engine.use_video(planned.info.display_width, planned.info.display_height)  # each video its own geometry
        capacity = engine.frame_capacity(prompt_tokens, len(planned.plan))  # first: it may lower the batch
        source = open_video(planned, sampling, capacity, StreamOptions(
            decoder=options.decoder, batch_size=engine.batch_size, geometry=engine.geometry), use_cache=False)
        chapters = chapter_ranges(source.times_s, source.duration_s, options.chapter_minutes)
        queries = [Query(SUMMARY_PROMPT)] + [Query(q) for q in options.questions]
        queries += [Query(CHAPTER_PROMPT, lo, hi) for lo, hi, _, _ in chapters]
        found = Evidence(engine, options.evidence, source.duration_s)
        answers, encoded = run_queries(engine, source, queries, bar or Progress(enabled=False),
                                       on_evidence=found.add if options.evidence else None)
    except VideoError as err:
        return {**record, "error": str(err), "timings_s": {"total": round(time.monotonic() - started, 3)}}
    n_q = 1 + len(options.questions)
    record.update(
        duration_s=source.duration_s, frames_used=encoded.frames, summary=answers[0],
        answers=[{"question": q, "answer": a, **found.fields(i)}
                 for i, (q, a) in enumerate(zip(options.questions, answers[1:n_q]), start=1)],
        chapters=[{"start_s": round(s, 3), "end_s": round(e, 3), "frames": hi - lo, "summary": a}
                  for (lo, hi, s, e), a in zip(chapters, answers[n_q:])],
        warnings=source.report.warnings() + source.notes, decoder=source.decoder,
        timings_s={**engine.recorder.timings(), "total": round(time.monotonic() - started, 3)},
    )
    if options.profile_memory:
        from vidmini.infra.memory_report import build_report

        record["memory"] = build_report(engine, encoded, engine.recorder)
    return record


# ---- the job -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """A worker took a file. `worker` is None for the plain in-process loop (its frame bar shows the file)."""

    path: str
    worker: str | None = None


@dataclass(frozen=True)
class Finished:
    """A file's record, complete, ready to be appended to the report."""

    record: dict
    worker: str | None = None


# Where the records come from: given the files to do and the progress display, yields Started and Finished events.
# The plain loop, `--devices` (vidmini.jobs.workers) and `--ray` (vidmini.jobs.scale.ray) each have one; run_job is the
# one writer for all of them.
EventSource = Callable[[list[str], "FolderProgress"], Iterator["Started | Finished"]]


def run_job(paths: list[str], out: str, options: SummarizeOptions, events: EventSource,
            progress: bool = True) -> tuple[int, int, int, int]:
    """Plan the work, then append each record as it arrives: this process is the report's only writer, whoever
    computes the records. Files already in the report are never handed to `events`. Returns (done now, skipped
    as already done, failed now, failed in an earlier run among the skipped)."""
    report = Report(out)
    found = find_videos(paths, options.glob, options.recursive, exclude=options.outputs)
    todo, skipped, earlier_failed = plan_work(found, report, options)
    done = failed = 0
    if not todo:
        return 0, skipped, 0, earlier_failed
    with FolderProgress(todo, enabled=progress) as bar, closing(events(todo, bar)) as stream:
        # closing(): leaving early (--fail-fast, Ctrl-C, an error) stops the workers before the lock is released
        for event in stream:
            if isinstance(event, Started):
                bar.begin(event.path, event.worker)
                continue
            record = event.record
            report.append(record)
            done += 1
            failed += record["error"] is not None
            bar.end(record["path"], record, event.worker)
            if record["error"] is not None and options.fail_fast:
                break
    return done, skipped, failed, earlier_failed


def run_summarize(engine_factory, paths: list[str], out: str, options: SummarizeOptions,
                  progress: bool = True) -> tuple[int, int, int, int]:
    """The plain loop: one engine in this process, file after file. Returns what run_job returns."""

    def in_process(todo: list[str], bar: FolderProgress) -> Iterator[Started | Finished]:
        engine = engine_factory()  # loaded only when there is work
        for path in todo:
            yield Started(path)
            engine.recorder.stages.clear()
            yield Finished(summarize_file(engine, path, options, bar.file_bar))

    return run_job(paths, out, options, in_process, progress)


def summary_line(out: str, done: int, skipped: int, failed: int, earlier_failed: int) -> str:
    """What this run did, with failures from earlier runs counted apart (they do not decide the exit code)."""
    earlier = f"; {earlier_failed} of them failed in an earlier run (--force redoes every file)" if earlier_failed else ""
    if done == 0:
        return f"nothing new: {skipped} file(s) already in {out}{earlier}"
    return f"{done} file(s) processed ({failed} failed), {skipped} already in {out}{earlier}"


class FolderProgress:
    """Files done/total, hours of video done/total, ETA, and what is being worked on (stderr): in the plain loop
    the current file with its own frame bar; with workers (--devices, --ray) a row per worker naming its file.
    In pipes and logs, lines instead: one per file done, and one per file a worker takes."""

    def __init__(self, files: list[str], enabled: bool = True):
        from vidmini.jobs.ask import Progress

        self.file_bar = Progress(enabled=enabled)
        self.durations = {f: _quick_duration(f) for f in files}
        self.total_hours = sum(self.durations.values()) / 3600
        self.files = files
        self.done = 0  # counted, not looked up: workers finish files out of order
        self.task = None
        self.rows: dict[str, object] = {}  # worker -> its row on a terminal

    def __enter__(self):
        self.file_bar.__enter__()
        bar = self.file_bar.bar
        self.task = bar.add_task(f"files 0/{len(self.files)}", total=max(1e-9, self.total_hours), rate="")
        return self

    def __exit__(self, *exc):
        self.file_bar.__exit__(*exc)

    def begin(self, path: str, worker: str | None = None) -> None:
        bar = self.file_bar.bar
        if worker is None:
            if self.file_bar.task is not None:
                bar.remove_task(self.file_bar.task)
                self.file_bar.task = None
            return
        description = f"{worker}: {os.path.basename(path)}"
        if worker in self.rows:
            bar.reset(self.rows[worker], total=None, description=description)  # elapsed: time on this file
        else:
            self.rows[worker] = bar.add_task(description, total=None, rate="")
        if self.file_bar.log_lines:
            self.file_bar.note(f"{worker}: started {path}")

    def end(self, path: str, record: dict, worker: str | None = None) -> None:
        bar = self.file_bar.bar
        bar.advance(self.task, self.durations.get(path, 0) / 3600)
        self.done += 1
        hours = self.file_bar.completed(self.task)
        bar.update(self.task, description=f"files {self.done}/{len(self.files)}",
                   rate=f"{hours:.2f}/{self.total_hours:.2f} h of video")
        if worker in self.rows:
            bar.update(self.rows[worker], description=f"{worker}: idle")
        by = f" ({worker})" if worker else ""
        if record["error"]:
            self.file_bar.note(record["error"] + by)
        elif self.file_bar.log_lines:
            self.file_bar.note(f"files {self.done}/{len(self.files)} ({hours:.2f}/{self.total_hours:.2f} h of video): "
                               f"{path}{by}")

    def forget(self, worker: str) -> None:
        """A worker is gone (it died, or was replaced): its row goes."""
        row = self.rows.pop(worker, None)
        if row is not None:
            self.file_bar.bar.remove_task(row)

    def note(self, message: str, always: bool = False) -> None:
        """A line on stderr: always (a warning), or only when progress is shown."""
        if always or self.file_bar.enabled or self.file_bar.log_lines:
            self.file_bar.note(message)


def _quick_duration(path: str) -> float:
    try:
        import av

        with av.open(path) as c:
            return (c.duration or 0) / 1e6
    except Exception:  # noqa: BLE001  unreadable files count as 0 h; they get an error record later
        return 0.0
