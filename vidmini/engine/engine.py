"""The streaming engine: frames -> LLM tokens in a preallocated buffer -> answers (docs/architecture.md, data flow).

One pass over the frames serves every query. A query is a question over a range of frames (the whole video, or a
chapter). The engine knows no model family: it talks to a FrameModel (vidmini.families.interface, docs/families.md).
Per batch of frames: normalise, `encode` (the vision side), `fuse` (the family's own step with the questions, if
any), and the units' tokens are written by index into the TokenBuffer. Then, per range, the LLM prefills
[prefix | frame tokens | after the frames] once and each question continues from there with its own suffix
(last-position logits only), at the positions the family gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from vidmini.engine import capacity
from vidmini.engine.capacity import text_config
from vidmini.errors import DeviceOutOfMemory
from vidmini.families.interface import FramePass
from vidmini.families.registry import adapt
from vidmini.infra.memory import Recorder
from vidmini.engine.generate import DEFAULT_CHUNK, decode, greedy, make_sampler, new_cache, positioned, prefill
from vidmini.inputs.preprocess import PixelBuffer, normalize, pixel_stats
from vidmini.engine.role_header import role_header_ids, tokens_before_answer, without_role_header
from vidmini.engine.token_buffer import TokenBuffer
from vidmini.inputs.video.frames import FrameBatch

Encoded = FramePass  # what engine.encode returns: the family's state of the pass, with the token buffer in it


@dataclass(frozen=True)
class Query:
    question: str
    start: int = 0  # first frame (in delivered order) the query sees
    end: int | None = None  # one past the last; None = to the end

    def frame_range(self, total: int) -> tuple[int, int]:
        return self.start, total if self.end is None else min(self.end, total)


@dataclass
class EngineOptions:
    batch_size: int | None = None  # frames per vision batch; None = chosen from free memory
    chunk: int = DEFAULT_CHUNK  # LLM prefill chunk
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    prefusion_tokens: int | None = None  # LLaVA-Mini: VisionZip keeps K vision tokens for pre-fusion (None = exact)
    evidence: bool = False  # score each answer's attention to the frames (vidmini.engine.relevance)
    evidence_layers: tuple[int, ...] | None = None  # LLM layers it reads; None = relevance.EVIDENCE_DEPTH of them


@dataclass(frozen=True)
class Relevance:
    """How much an answer attended to each frame of its range (vidmini.engine.relevance), and when each frame is.
    A frame's score is its unit's: the sum over the unit's tokens (each frame of a multi-frame unit gets it whole)."""

    answer: torch.Tensor  # [layers, F] fp32: per chosen layer, the answer's attention (mean over heads and positions)
    baseline: torch.Tensor  # [layers, F] fp32: paid by the first position after the frames (not the question)
    times: torch.Tensor  # [F] float64: the frames' presentation times, seconds from the video's start
    layers: list[int]  # the LLM layers of the rows

    def scores(self, rows: list[int] | None = None) -> torch.Tensor:
        """[F]: the answer's attention to each frame, averaged over the layers (or these rows of them). The
        baseline is kept for measurement only: subtracting it did not localise better on the demo model's needles
        (bench/evidence.py reports both)."""
        rows = slice(None) if rows is None else rows
        return self.answer[rows].mean(0)


class _Held:
    """Frames of an incomplete unit, carried over to the next batch; at the end, the last unit is completed by
    repeating the video's last frame (as the multi-frame families' processors pad a clip). One-frame units pass
    through untouched."""

    def __init__(self, per_unit: int):
        self.per_unit = per_unit
        self.frames: np.ndarray | None = None  # [< per_unit, H, W, 3]
        self.times: np.ndarray | None = None

    def take(self, frames: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(frames, times, real frames) of the whole units available now."""
        if self.per_unit == 1:
            return frames, times, len(frames)
        if self.frames is not None:  # a few frames held: one copy of this batch with them in front
            frames, times = np.concatenate([self.frames, frames]), np.concatenate([self.times, times])
        whole = len(frames) // self.per_unit * self.per_unit
        self.frames, self.times = (frames[whole:], times[whole:]) if whole < len(frames) else (None, None)
        return frames[:whole], times[:whole], whole

    def rest(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The held frames as one unit, padded with the last frame; nothing when none are held."""
        if self.frames is None:
            return np.empty((0,)), np.empty((0,)), 0
        real, pad = len(self.frames), self.per_unit - len(self.frames)
        frames = np.concatenate([self.frames, np.repeat(self.frames[-1:], pad, axis=0)])
        times = np.concatenate([self.times, np.repeat(self.times[-1:], pad)])
        self.frames = self.times = None
        return frames, times, real


class Frames:
    """The engine's side of its FrameModel: the prompt, the embedded pieces around the frames and what follows
    them, routed through one place (tests and benches replace `prompt_ids` here to pin a prompt)."""

    def __init__(self, model):
        self.model = model

    def prompt_ids(self, question: str) -> list[int]:
        return self.model.prompt_ids(question)

    def pieces(self, encoded: Encoded, key, count: int, index: int):
        """(prefix [n, H], suffix [m, H]) of question `index` over the range `key` of `count` frames."""
        return self.model.pieces(encoded, key, count, index)

    def after_frames(self) -> torch.Tensor:
        return self.model.after_frames()  # [n, H]


class Engine:
    def __init__(self, model, tokenizer, options: EngineOptions | None = None, recorder: Recorder | None = None):
        self.options = options or EngineOptions()
        self.family_model = adapt(model, tokenizer, prefusion_tokens=self.options.prefusion_tokens)  # vidmini.families.registry
        self.model = self.family_model  # at the current video's geometry (use_geometry)
        self.tokenizer = tokenizer
        self.device = self.model.device
        self.dtype = self.model.compute_dtype
        self.recorder = recorder or Recorder(device=str(self.device))
        self.frames = Frames(self.model)
        self.geometry = self.model.geometry
        self.shape = self.model.shape  # what a unit costs (vidmini.engine.capacity)
        self.stats = pixel_stats(self.model.image_mean, self.model.image_std).to(self.device)
        self.batch_size = self.options.batch_size or capacity.auto_batch_size(self.shape, self.dtype, self.device)
        self.measured_kv_bytes_per_token: int | None = None  # from the real cache tensors, after an answer
        self.role_header = role_header_ids(tokenizer)  # never part of an answer (answer_tokens)

    def use_video(self, width: int, height: int):
        """Take the frame geometry the family gives a video displayed at width x height (FrameModel.geometry_for)
        and return it: what the decoder resizes to."""
        return self.use_geometry(self.family_model.geometry_for(width, height))

    def use_geometry(self, geometry):
        """Frames of `geometry` from now on: the model's view of it (FrameModel.at) and, when that changes, what a
        unit costs and the vision batch chosen from it. The fixed-geometry families never change here, so the
        engine's state (a batch already lowered for an earlier video) stays as it was."""
        if geometry != self.geometry:
            self.model = self.frames.model = self.family_model.at(geometry)
            self.geometry, self.shape = geometry, self.model.shape
            self.batch_size = self.options.batch_size or capacity.auto_batch_size(self.shape, self.dtype, self.device)
        return geometry

    @property
    def tokens_per_frame(self) -> int | float:
        """LLM tokens a frame of the current video leaves (capacity.tokens_per_video_frame)."""
        return capacity.tokens_per_video_frame(self.shape)

    def kv_bytes_per_token(self) -> int:
        return capacity.kv_bytes_per_token(self.shape, self.dtype)

    def frame_capacity(self, prompt_tokens: int, wanted: int) -> capacity.Capacity:
        """How many of `wanted` frames this engine can hold for prompts of `prompt_tokens` (capacity.frame_capacity).
        The vision batch is first lowered to what leaves room for those frames (capacity.batch_beside), so a large
        --batch-size never costs frames."""
        free, max_new = capacity.free_bytes(self.device), self.options.max_new_tokens
        smallest = capacity.frame_capacity(self.shape, self.dtype, 1, free, prompt_tokens, max_new)
        frames = min(wanted, smallest.frames)
        self.batch_size = capacity.batch_beside(self.shape, self.dtype, self.batch_size, free, frames, prompt_tokens,
                                                max_new)
        return capacity.frame_capacity(self.shape, self.dtype, self.batch_size, free, prompt_tokens, max_new)

    # ---- prompts -------------------------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        """The question's prompt as the LLM sees it, one placeholder per non-frame video token."""
        return self.frames.prompt_ids(question)

    # ---- the pass over the frames ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batches: Iterable[FrameBatch], capacity: int, queries: list[Query],
               on_batch: Callable[[FrameBatch], None] | None = None) -> Encoded:
        questions = list(dict.fromkeys(q.question for q in queries))
        hidden = text_config(self.shape).hidden_size
        per_unit = self.model.frames_per_unit
        buffer = TokenBuffer(-(-capacity // per_unit), self.model.tokens_per_unit, hidden, self.device, self.dtype,
                             per_unit)
        ranges = list(dict.fromkeys((q.start, q.end) for q in queries))
        prompts = [self.prompt_ids(q) for q in questions]
        encoded = self.model.begin(FramePass(questions, prompts, ranges), self.device, self.dtype)
        encoded.buffer = buffer
        # On the CPU the float pixels of every batch go to one buffer kept for the pass (see PixelBuffer); CUDA's
        # caching allocator reuses memory by itself.
        scratch = PixelBuffer(self.device) if self.device.type == "cpu" else None
        held = _Held(per_unit)
        for batch in self._timed(batches):
            self._write(held.take(batch.frames, batch.times_s), encoded, scratch)
            if on_batch:
                on_batch(batch)
        self._write(held.rest(), encoded, scratch)
        return encoded

    def _write(self, piece, encoded: Encoded, scratch) -> None:
        """Encode whole units of frames (pixels [n, H, W, 3], times [n], real frames) into the buffer."""
        frames, times, real = piece
        if not len(frames):
            return
        buffer, per_unit = encoded.buffer, self.model.frames_per_unit
        first = start = buffer.count
        for out in self._encoded(frames, encoded, scratch):
            units = len(out.tokens)
            lo = (first - start) * per_unit
            count = min(units * per_unit, max(0, real - lo))
            buffer.write(out.tokens, times[lo : lo + units * per_unit], out.grid, count)
            first = buffer.count

    def _timed(self, batches: Iterable[FrameBatch]):
        """The batches, with the wait for each recorded as the "decode" stage (decoding runs ahead in a thread:
        this is the time the model waited on it)."""
        iterator = iter(batches)
        while True:
            with self.recorder.stage("decode"):
                batch = next(iterator, None)
            if batch is None:
                return
            yield batch

    def _encoded(self, frames, encoded: Encoded, scratch: PixelBuffer | None = None):
        """UnitTokens for the frames (whole units), in pieces small enough to fit."""
        pixels = torch.from_numpy(frames).to(self.device)  # [B, H, W, 3] uint8: 4x less to move than floats
        per_unit = self.model.frames_per_unit
        stage = self.model.fusion_stage
        lo = 0
        while lo < len(pixels):
            size = max(per_unit, min(self.batch_size, len(pixels) - lo) // per_unit * per_unit)
            piece = pixels[lo : lo + size]
            out = scratch.take(piece.numel()) if scratch is not None else None
            try:
                with self.recorder.stage("vision encode"):
                    pv = normalize(piece, self.stats, out)  # [b, 3, H, W] fp32 from uint8 [b, H, W, 3]
                    result = self.model.encode(pv, encoded)
                if stage is not None:
                    with self.recorder.stage(stage):
                        result = self.model.fuse(result, encoded, encoded.buffer.count)
            except torch.OutOfMemoryError:
                self._back_off("vision batch")
                continue
            yield result
            lo += size

    def _back_off(self, what: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size == 1:
            raise DeviceOutOfMemory(f"out of device memory with a {what} of 1 frame; try --quantize 8bit or a smaller --dtype")
        self.batch_size = max(1, self.batch_size // 2)

    # ---- answers --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, encoded: Encoded, queries: list[Query], on_token: Callable[[int, int], None] | None = None,
               on_evidence: Callable[[int, Relevance], None] | None = None) -> list[list[int]]:
        """Token ids of each query's answer, in query order. on_token(query index, token id) streams them. With
        options.evidence, on_evidence(query index, Relevance) follows each answer as soon as it is complete."""
        answers: list[list[int] | None] = [None] * len(queries)
        by_range: dict[tuple, list[int]] = {}
        for i, q in enumerate(queries):
            by_range.setdefault((q.start, q.end), []).append(i)
        for key, members in by_range.items():
            for i, tokens in zip(members, self._answer_range(encoded, queries, key, members, on_token, on_evidence)):
                answers[i] = tokens
        return answers

    def _capture(self):
        """The evidence's query capture on the chosen LLM layers, or None without options.evidence."""
        if not self.options.evidence:
            return None
        from vidmini.engine.relevance import QueryCapture, evidence_layers

        decoder = self.model.get_decoder()
        layers = self.options.evidence_layers or evidence_layers(len(decoder.layers))
        return QueryCapture(decoder, list(layers))

    def _answer_range(self, encoded: Encoded, queries, key, members, on_token, on_evidence=None):
        """[prefix | frames | after the frames | suffix] per question; the first three once when every question's
        prefix is the same, each question then continuing from the rewound cache."""
        start, end = queries[members[0]].frame_range(encoded.frames)
        count = max(1, end - start)
        frames = encoded.buffer.frames(start, end)  # [units*K, H]: a view of the buffer, never copied
        span = encoded.buffer.span(start, end)
        after = self.frames.after_frames().to(frames.dtype)  # [n, H]: OneVision's newline; nothing for the others
        embeds = [self.frames.pieces(encoded, key, count, encoded.questions.index(queries[i].question))
                  for i in members]
        shared = embeds[0][0]
        same_prefix = all(torch.equal(p, shared) for p, _ in embeds)
        pick = make_sampler(self.options.temperature, self.options.top_p, self.options.seed) \
            if self.options.do_sample else greedy
        max_new, eos = self.options.max_new_tokens, self.model.eos_ids()
        shared_len = len(shared) + len(frames) + len(after)
        longest = max(len(s) for _, s in embeds)
        cache = new_cache(self.model, shared_len + longest + capacity.answer_positions(max_new))
        if same_prefix:
            with self.recorder.stage("LLM prefill"):
                self._prefill(positioned(self.model, self.model.positions(len(shared), span, len(after))),
                              [shared, frames, after], cache, 0)
        capture = self._capture()
        recording = capture.recording if capture else nullcontext
        for i, (prefix, suffix) in zip(members, embeds):
            after_frames = len(prefix) + len(frames) + len(after)  # the first position after the video
            positions = self.model.positions(len(prefix), span, len(after))
            llm = positioned(self.model, positions, capture.at if capture else None)  # the capture hears each step
            with self.recorder.stage("LLM prefill"), recording(after_frames):
                if same_prefix:
                    cache.rewind(shared_len)
                    logits = self._prefill(llm, [suffix], cache, shared_len)
                else:
                    cache.rewind(0)
                    logits = self._prefill(llm, [prefix, frames, after, suffix], cache, 0)
            with self.recorder.stage("answer decode"), recording(after_frames):
                emit = (lambda t, i=i: on_token(i, t)) if on_token else None
                tokens = decode(llm, logits, shared_len + len(suffix), cache, max_new, eos, pick, emit,
                                uncounted=self.header_tokens)
            self._measure_cache(cache, shared_len + longest + capacity.answer_positions(max_new))
            if capture:
                with self.recorder.stage("evidence"):
                    answer, baseline = capture.frame_attention(  # [layers, units] each
                        cache, len(prefix), span.units, span.tokens_per_unit,
                        queries_from=after_frames + len(suffix) - 1, positions=positions)  # the question's last on
                    capture.clear()
                if on_evidence:
                    times, unit = encoded.buffer.frame_units(start, end)  # [F] each: a unit's score is its frames'
                    on_evidence(i, Relevance(answer[:, unit].cpu(), baseline[:, unit].cpu(), times, capture.layers))
            yield tokens

    def _prefill(self, llm, pieces, cache, start):
        """prefill through `llm` (the model at its positions), halving the chunk on out-of-memory."""
        while True:
            try:
                return prefill(llm, pieces, cache, self.options.chunk, start)
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.options.chunk <= 64:
                    raise DeviceOutOfMemory("out of device memory in the LLM prefill even in chunks of 64 tokens")
                self.options.chunk //= 2
                cache.rewind(start)

    def _measure_cache(self, cache, positions: int) -> None:
        allocated = cache.allocated_bytes()
        if allocated:
            self.measured_kv_bytes_per_token = allocated // positions

    def header_tokens(self, tokens: list[int]) -> int:
        """How many of `tokens` do not count against --max-new-tokens (role_header.tokens_before_answer), so that
        `--max-new-tokens 1` is one token of answer; capacity.ANSWER_HEADROOM holds them."""
        def is_blank(token: int) -> bool:
            return not self.tokenizer.decode([token], skip_special_tokens=True).strip()

        return min(tokens_before_answer(tokens, self.role_header, is_blank), capacity.ANSWER_HEADROOM)

    def answer_tokens(self, tokens: list[int]) -> list[int] | None:
        """The answer's tokens without the role header the model may write first; None while they may still be
        that header (prompt.without_role_header)."""
        return without_role_header(tokens, self.role_header)

    def decode_text(self, tokens: list[int]) -> str:
        visible = self.answer_tokens(tokens)
        return self.tokenizer.decode(tokens if visible is None else visible, skip_special_tokens=True).strip()


def build_engine(load, options: EngineOptions, profile_memory: bool = False, questions=(),
                 max_question_tokens: int | None = None) -> Engine:
    """Load the model (vidmini.families.loading.LoadOptions) and wrap it in an Engine; the load is timed as a stage.
    `questions` (summarize's --question) are held to `max_question_tokens` as soon as the tokenizer is there, as
    `ask` holds its own."""
    from vidmini.families.loading import check_before_load, load_model, pick_device
    from vidmini.inputs.questions import DEFAULT_MAX_QUESTION_TOKENS, check_length

    check_before_load(load, options.max_new_tokens, options.prefusion_tokens)  # from the config: before the weights
    recorder = Recorder(memory=profile_memory, device=pick_device(load.device))
    with recorder.stage("load"):
        model, tokenizer = load_model(load)
    check_length(tokenizer, list(questions), max_question_tokens or DEFAULT_MAX_QUESTION_TOKENS)
    return Engine(model, tokenizer, options, recorder)
