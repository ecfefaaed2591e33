"""`vidmini ask`: open the input (video or image), size the buffer, run the engine, stream the answers."""

from __future__ import annotations

import os
import sys
import time

from vidmini.engine.engine import Engine, Query
from vidmini.engine.evidence import Evidence
from vidmini.infra.memory_report import MemoryOutputs
from vidmini.inputs.questions import DEFAULT_MAX_QUESTION_TOKENS, check_length, cost_note
from vidmini.inputs.sources import Sampling, Source, is_image, open_image, open_video, plan_video
from vidmini.inputs.video import StreamOptions, VideoError


LOG_STEP_PERCENT = 10


class Progress:
    """Frames done / total, frames/s, stage and ETA on stderr: a live bar on a terminal; in pipes and logs, where a
    bar would be noise, one line per 10 % of the frames."""

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
        self.log_lines = enabled and not self.console.is_terminal
        self.task = None
        self.logged_percent = 0
        self.started = time.monotonic()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        self.started = time.monotonic()
        self.logged_percent = 0
        self.task = self.bar.add_task(description, total=total, rate="")

    def advance(self, n: int) -> None:
        if self.task is None:
            return
        self.bar.advance(self.task, n)
        done = self.completed(self.task)
        rate = done / max(1e-6, time.monotonic() - self.started)
        self.bar.update(self.task, rate=f"{rate:.1f} frames/s")
        if self.log_lines:
            self._log_line(done, rate)

    def _log_line(self, done: float, rate: float) -> None:
        task = next(t for t in self.bar.tasks if t.id == self.task)
        percent = int(100 * done / max(1, task.total or 1)) // LOG_STEP_PERCENT * LOG_STEP_PERCENT
        if percent > self.logged_percent:
            self.logged_percent = percent
            self.note(f"{task.description}: {percent}% ({int(done)}/{int(task.total or 0)} frames, {rate:.1f} frames/s)")

    def completed(self, task_id) -> float:
        return next((t.completed for t in self.bar.tasks if t.id == task_id), 0.0)

    def stage(self, description: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=description)

    def note(self, message: str) -> None:
        print(f"vidmini: {message}", file=sys.stderr, flush=True)


def run_queries(engine: Engine, source: Source, queries: list[Query], progress: Progress,
                on_token=None, on_answer_start=None, on_evidence=None) -> tuple[list[str], object]:
    """Encode the source once for all queries, then answer them. Returns (answers, encoded). With the engine's
    evidence option, on_evidence(query index, Relevance) follows each answer."""
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

    tokens = engine.answer(encoded, queries, on_token=token, on_evidence=on_evidence)
    return [engine.decode_text(t) for t in tokens], encoded


class TextStreamer:
    """Prints each answer to stdout as its tokens arrive (decoding the whole answer so far, so multi-byte
    characters split across tokens come out whole)."""

    def __init__(self, engine: Engine, queries: list[Query], label: bool):
        self.engine, self.queries, self.label = engine, queries, label
        self.tokens: dict[int, list[int]] = {}
        self.printed: dict[int, str] = {}
        self.closed: set[int] = set()

    def start(self, i: int) -> None:
        if self.label:
            print(f"{'' if i == 0 else chr(10)}Q: {self.queries[i].question}\nA: ", end="", flush=True)

    def token(self, i: int, t: int) -> None:
        self.tokens.setdefault(i, []).append(t)
        visible = self.engine.answer_tokens(self.tokens[i])
        if visible is None:  # perhaps the role header: wait for the next token
            return
        text = self.engine.tokenizer.decode(visible, skip_special_tokens=True).lstrip()
        done = self.printed.get(i, "")
        if text.startswith(done) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(done):])
            sys.stdout.flush()
            self.printed[i] = text

    def close(self, i: int, answer: str, after: str = "") -> None:
        """Answer i is complete: print what streaming held back (a trailing partial character, or the whole
        answer when it had no tokens), then `after` (its evidence) on a line of its own."""
        if i in self.closed:
            return
        if i not in self.tokens:
            self.start(i)
        done = self.printed.get(i, "")
        if answer.startswith(done):
            sys.stdout.write(answer[len(done):])
        if after:
            sys.stdout.write("\n" + after)
        sys.stdout.flush()
        self.closed.add(i)

    def finish(self, answers: list[str]) -> None:
        """Close every answer not closed yet; end the line."""
        for i, answer in enumerate(answers):
            self.close(i, answer)
        print(flush=True)


def run_ask(model, tokenizer, path: str, questions: list[str], *, model_name: str, sampling: Sampling,
            decoder: str = "auto", batch_size: int | None = None, max_new_tokens: int = 512,
            temperature: float = 0.0, top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
            profile_memory: bool = False, progress: bool = True, streamer=None, recorder=None,
            decode_workers: int = 1, max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
            prefusion_tokens: int | None = None, evidence: int = 0, evidence_plot: str | None = None) -> dict:
    """The whole `ask` job. Returns the --json object; streams answers through `streamer` when given.
    evidence: the number of moments each answer reports (0: none, and no evidence work at all); evidence_plot:
    where to draw them (its path is checked by the caller, before the model loads)."""
    from vidmini.engine.engine import EngineOptions
    from vidmini.infra.memory import Recorder

    started = time.monotonic()
    recorder = recorder or Recorder(memory=profile_memory, device=str(model.device))
    options = EngineOptions(batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                            temperature=temperature or 1.0, top_p=top_p, seed=seed,
                            prefusion_tokens=prefusion_tokens, evidence=evidence > 0)
    try:
        engine = Engine(model, tokenizer, options, recorder)
        counts = check_length(tokenizer, questions, max_question_tokens)
        queries = [Query(q) for q in questions]
        with Progress(enabled=progress) as bar:
            with recorder.stage("open"):
                source = _open_source(engine, path, sampling, decoder, use_cache, questions, decode_workers)
            cost = cost_note(counts, source.total)
            for note in source.notes + ([cost] if cost else []):
                bar.note(note)
            stream = streamer(engine, queries) if streamer else None
            found = Evidence(engine, evidence, source.duration_s, stream)
            answers, encoded = run_queries(engine, source, queries, bar, on_token=stream.token if stream else None,
                                           on_answer_start=stream.start if stream else None,
                                           on_evidence=found.add if evidence else None)
            if stream:
                stream.finish(answers)
            for question, answer in zip(questions, answers):
                if not answer:  # an empty line on stdout alone would look like a failure of vidmini
                    bar.note(f"the model gave an empty answer to {question!r} (it ended its reply at once)")
            for warning in source.report.warnings():
                bar.note(f"{path}: {warning}")
            cache_info = _cache_info(source)
            if cache_info and not source.from_cache:
                bar.note(f"cached {cache_info['bytes'] / 1e6:.1f} MB of decoded frames in {cache_info['path']}")
        result = {
            "video": path, "model": model_name, "duration_s": source.duration_s, "frames_used": encoded.frames,
            "tokens_per_frame": engine.tokens_per_frame, "prefusion_tokens": prefusion_tokens,
            "fps": sampling.fps if source.kind == "video" else None, "decoder": source.decoder,
            "from_cache": source.from_cache, "cache": cache_info, "notes": source.notes,
            "warnings": source.report.warnings(),
            "answers": [{"question": q, "answer": a, **found.fields(i)}
                        for i, (q, a) in enumerate(zip(questions, answers))],
            "timings_s": {**recorder.timings(), "total": round(time.monotonic() - started, 3)},
        }
        if evidence_plot is not None:
            found.plot(questions, evidence_plot)
        if profile_memory:
            from vidmini.infra.memory_report import build_report, print_report

            result["memory"] = build_report(engine, encoded, recorder)
            print_report(result["memory"])
        return result
    finally:
        recorder.close()


def ask_job(load, video: str, questions: list[str], memory: MemoryOutputs, *, profile_memory: bool,
            memory_interval: float, max_new_tokens: int, prefusion_tokens: int | None, **run) -> dict:
    """`vidmini ask` once its options are checked: the config checks before the weights, the memory outputs'
    lifecycle around the load and the work, then run_ask (`run`: its keyword options). Returns the --json object."""
    from vidmini.infra.memory import Recorder
    from vidmini.families.loading import check_before_load, load_model, pick_device

    check_before_load(load, max_new_tokens, prefusion_tokens)  # from the config, before the weights
    device = pick_device(load.device)
    memory.start(device)
    profile_memory = profile_memory or memory.needs_profile
    recorder = Recorder(memory=profile_memory, device=device, interval_s=memory_interval)
    with recorder.stage("load"):
        loaded, tokenizer = load_model(load)
    result = run_ask(loaded, tokenizer, video, questions, model_name=load.model, max_new_tokens=max_new_tokens,
                     prefusion_tokens=prefusion_tokens, profile_memory=profile_memory, recorder=recorder, **run)
    memory.finish(recorder)
    return result


def _cache_info(source: Source) -> dict | None:
    if source.cache is None or not source.cache.exists():
        return None
    return {"path": str(source.cache.dir), "bytes": source.cache.size_bytes}


def _open_source(engine: Engine, path: str, sampling: Sampling, decoder: str, use_cache: bool,
                 questions: list[str], decode_workers: int = 1) -> Source:
    if is_image(path):
        source = open_image(path, engine.family_model)
        engine.use_geometry(source.geometry)
        return source
    prompt_tokens = max(len(engine.prompt_ids(q)) for q in questions)
    planned = plan_video(path, sampling)
    engine.use_video(planned.info.display_width, planned.info.display_height)  # first: the frames' size and cost
    capacity = engine.frame_capacity(prompt_tokens, len(planned.plan))  # first: it may lower the batch
    stream = StreamOptions(decoder=decoder, batch_size=engine.batch_size, workers=decode_workers,
                           geometry=engine.geometry)
    return open_video(planned, sampling, capacity, stream, use_cache)
