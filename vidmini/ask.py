"""`vidmini ask`: open the input (video or image), size the buffer, run the engine, stream the answers."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vidmini.cache import FrameCache
from vidmini.engine import Engine, Query, bytes_per_frame
from vidmini.video import DecodeReport, FrameBatch, FrameStream, StreamOptions, VideoError, make_plan, probe

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Sampling:
    mode: str = "time"
    fps: float = 1.0
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None


@dataclass
class Source:
    path: str
    kind: str  # "video" | "image"
    total: int  # frames the model will see
    duration_s: float | None
    batches: Callable[[], Iterator[FrameBatch]]
    report: DecodeReport = field(default_factory=DecodeReport)
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False
    decoder: str = ""
    times_s: np.ndarray | None = None  # planned sample times (video sources)
    cache: FrameCache | None = None


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def open_image(path: str, config) -> Source:
    from PIL import Image, UnidentifiedImageError

    from vidmini.model.preprocess import process_image

    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            pixels = process_image(image, config.image_aspect_ratio, config.image_mean)
    except (UnidentifiedImageError, OSError) as err:
        raise VideoError(f"{path}: not a readable image ({err})")
    batch = FrameBatch(pixels[None], np.zeros(1), np.zeros(1, dtype=np.int64))
    return Source(path, "image", 1, None, lambda: iter([batch]), decoder="pillow")


def frame_capacity(engine: Engine, prompt_tokens: int) -> tuple[int, str]:
    """How many frames fit: the LLM's context, and the memory left for the buffer + KV cache."""
    import torch

    model, cfg = engine.model, engine.model.config
    per_frame_tokens = model.tokens_per_frame
    context = (cfg.max_position_embeddings - prompt_tokens - engine.options.max_new_tokens) // per_frame_tokens
    per_frame = bytes_per_frame(cfg, engine.dtype)
    working = engine.batch_size * engine.working_bytes_per_frame() + 512 * 1024**2
    if engine.device.type == "cuda":
        free = torch.cuda.mem_get_info(engine.device)[0]
    else:
        free = _available_ram() // 2  # leave the other half to decoding, the OS and everyone else
    memory = max(1, (free - working) // per_frame)
    if memory < context:
        return int(memory), f"memory left on {engine.device.type} for the token buffer and KV cache"
    return int(context), f"the LLM's context ({cfg.max_position_embeddings} positions)"


def _available_ram() -> int:
    from vidmini.memory import proc_kib_field

    return proc_kib_field("/proc/meminfo", "MemAvailable") or 8 * 1024**3


def open_video(path: str, sampling: Sampling, capacity: tuple[int, str], stream: StreamOptions,
               use_cache: bool) -> Source:
    info = probe(path)
    plan = make_plan(info, sampling.mode, sampling.fps, sampling.max_frames, sampling.start, sampling.end)
    notes = list(info.notes)
    limit, why = capacity
    if len(plan) > limit:
        wanted = len(plan)
        if sampling.mode == "reference":
            raise VideoError(f"{path}: {wanted} frames do not fit ({why}: {limit}); use --sampling time or --max-frames")
        plan = make_plan(info, "time", sampling.fps, limit, sampling.start, sampling.end)
        notes.append(f"{wanted} frames at {sampling.fps:g} fps do not fit ({why}); using {len(plan)} frames spread "
                     f"over the whole video (one every {info.duration_s / len(plan):.2f} s)")
    cache = FrameCache(path, plan.key()) if use_cache else None
    if cache is not None and cache.exists():
        return Source(path, "video", cache.meta()["count"], info.duration_s, lambda: cache.batches(stream.batch_size),
                      cache.report(), notes, from_cache=True, decoder="cache", times_s=plan.times_s, cache=cache)
    frames = FrameStream(info, plan, stream)
    return Source(path, "video", len(plan), info.duration_s, lambda: _stream_into_cache(frames, cache, len(plan)),
                  frames.report, notes, decoder=frames.backend, times_s=plan.times_s, cache=cache)


def _stream_into_cache(stream: FrameStream, cache: FrameCache | None, expected: int) -> Iterator[FrameBatch]:
    """Yield the stream's batches; keep a copy in the cache, committed only if the stream ends normally."""
    if cache is None:
        yield from stream
        return
    with cache.writer(expected) as writer:
        for batch in stream:
            if writer is not None:
                writer.add(batch)
            yield batch
        if writer is not None:
            writer.commit(stream.report)


class Progress:
    """Frames done / total, frames/s, stage and ETA on stderr (only on a terminal; silent in pipes and logs)."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            disable=not self.enabled,
        )
        self.task = None
        self.started = time.monotonic()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        self.started = time.monotonic()
        self.task = self.bar.add_task(description, total=total, rate="")

    def advance(self, n: int) -> None:
        if self.task is None:
            return
        self.bar.advance(self.task, n)
        done = self.completed(self.task)
        rate = done / max(1e-6, time.monotonic() - self.started)
        self.bar.update(self.task, rate=f"{rate:.1f} frames/s")

    def completed(self, task_id) -> float:
        return next((t.completed for t in self.bar.tasks if t.id == task_id), 0.0)

    def stage(self, description: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=description)

    def note(self, message: str) -> None:
        print(f"vidmini: {message}", file=sys.stderr, flush=True)


def run_queries(engine: Engine, source: Source, queries: list[Query], progress: Progress,
                on_token=None, on_answer_start=None) -> tuple[list[str], object]:
    """Encode the source once for all queries, then answer them. Returns (answers, encoded)."""
    progress.start(f"{os.path.basename(source.path)}: decode + encode", source.total)
    encoded = engine.encode(source.batches(), max(1, source.total), queries,
                            on_batch=lambda b: progress.advance(len(b.positions)))
    if encoded.frames == 0:
        raise VideoError(f"{source.path}: no frame of the video could be decoded")
    progress.stage("answering")
    current = {"query": None}

    def token(i: int, t: int) -> None:
        if on_answer_start and current["query"] != i:
            current["query"] = i
            on_answer_start(i)
        if on_token:
            on_token(i, t)

    tokens = engine.answer(encoded, queries, on_token=token)
    return [engine.decode_text(t) for t in tokens], encoded


class TextStreamer:
    """Prints each answer to stdout as its tokens arrive (decoding the whole answer so far, so multi-byte
    characters split across tokens come out whole)."""

    def __init__(self, engine: Engine, queries: list[Query], label: bool):
        self.engine, self.queries, self.label = engine, queries, label
        self.tokens: dict[int, list[int]] = {}
        self.printed: dict[int, str] = {}

    def start(self, i: int) -> None:
        if self.label:
            print(f"{'' if i == 0 else chr(10)}Q: {self.queries[i].question}\nA: ", end="", flush=True)

    def token(self, i: int, t: int) -> None:
        self.tokens.setdefault(i, []).append(t)
        text = self.engine.tokenizer.decode(self.tokens[i], skip_special_tokens=True).lstrip()
        done = self.printed.get(i, "")
        if text.startswith(done) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(done):])
            sys.stdout.flush()
            self.printed[i] = text

    def finish(self, answers: list[str]) -> None:
        """Print what streaming held back (a trailing partial character, answers with no tokens); end the line."""
        for i, answer in enumerate(answers):
            if i not in self.tokens:
                self.start(i)
                sys.stdout.write(answer)
                continue
            done = self.printed.get(i, "")
            if answer.startswith(done):
                sys.stdout.write(answer[len(done):])
        print(flush=True)


def run_ask(model, tokenizer, path: str, questions: list[str], *, model_name: str, sampling: Sampling,
            decoder: str = "auto", batch_size: int | None = None, max_new_tokens: int = 512,
            temperature: float = 0.0, top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
            profile_memory: bool = False, progress: bool = True, streamer=None, recorder=None,
            decode_workers: int = 1) -> dict:
    """The whole `ask` job. Returns the --json object; streams answers through `streamer` when given."""
    from vidmini.engine import EngineOptions
    from vidmini.memory import Recorder

    started = time.monotonic()
    recorder = recorder or Recorder(memory=profile_memory, device=str(model.device))
    options = EngineOptions(batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                            temperature=temperature or 1.0, top_p=top_p, seed=seed)
    try:
        engine = Engine(model, tokenizer, options, recorder)
        queries = [Query(q) for q in questions]
        with Progress(enabled=progress) as bar:
            with recorder.stage("open"):
                source = _open_source(engine, path, sampling, decoder, use_cache, questions, decode_workers)
            for note in source.notes:
                bar.note(note)
            stream = streamer(engine, queries) if streamer else None
            answers, encoded = run_queries(engine, source, queries, bar, on_token=stream.token if stream else None,
                                           on_answer_start=stream.start if stream else None)
            if stream:
                stream.finish(answers)
            for warning in source.report.warnings():
                bar.note(f"{path}: {warning}")
            cache_info = _cache_info(source)
            if cache_info and not source.from_cache:
                bar.note(f"cached {cache_info['bytes'] / 1e6:.1f} MB of decoded frames in {cache_info['path']}")
        result = {
            "video": path, "model": model_name, "duration_s": source.duration_s, "frames_used": encoded.frames,
            "fps": sampling.fps if source.kind == "video" else None, "decoder": source.decoder,
            "from_cache": source.from_cache, "cache": cache_info, "notes": source.notes,
            "warnings": source.report.warnings(),
            "answers": [{"question": q, "answer": a} for q, a in zip(questions, answers)],
            "timings_s": {**recorder.timings(), "total": round(time.monotonic() - started, 3)},
        }
        if profile_memory:
            from vidmini.memory_report import build_report, print_report

            result["memory"] = build_report(engine, encoded, recorder)
            print_report(result["memory"])
        return result
    finally:
        recorder.close()


def _cache_info(source: Source) -> dict | None:
    if source.cache is None or not source.cache.exists():
        return None
    return {"path": str(source.cache.dir), "bytes": source.cache.size_bytes}


def _open_source(engine: Engine, path: str, sampling: Sampling, decoder: str, use_cache: bool,
                 questions: list[str], decode_workers: int = 1) -> Source:
    if is_image(path):
        return open_image(path, engine.model.config)
    prompt_tokens = max(len(engine.prompt_ids(q)) for q in questions)
    capacity = frame_capacity(engine, prompt_tokens)
    stream = StreamOptions(decoder=decoder, batch_size=engine.batch_size, workers=decode_workers)
    return open_video(path, sampling, capacity, stream, use_cache)
