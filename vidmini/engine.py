"""The streaming engine: frames -> vision tokens in a preallocated buffer -> answers (docs/design.md, data flow).

One pass over the frames serves every query. A query is a question over a range of frames (the whole video, or a
chapter). Per batch of frames, a frame strategy turns pixels into K tokens per frame, written by index into the
TokenBuffer:
- MiniFrames (LLaVA-Mini): CLIP + compressor + projector, then one pre-fusion pass with all the questions packed
  in (vidmini.model.prefusion); each query's fused prompt is summed in fp32 over the frames of its range.
- PlainFrames (vidmini.backends.hf_video: LLaVA-NeXT-Video, LLaVA-OneVision): the model's own per-frame tokens,
  K of them by VisionZip; the prompt is the model's own chat format, embedded as it is.
Then, per range, the LLM prefills [prefix | frame tokens | after the frames] once and each question continues from
there with its own suffix (last-position logits only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from vidmini import capacity
from vidmini.capacity import text_config
from vidmini.errors import DeviceOutOfMemory, UsageError
from vidmini.memory import Recorder
from vidmini.model.generate import DEFAULT_CHUNK, decode, greedy, make_sampler, new_cache, prefill
from vidmini.model.prefusion import IMAGE_TOKEN_INDEX, FusionLayout
from vidmini.model.preprocess import PixelBuffer, normalize, pixel_stats
from vidmini.model.prompt import SYSTEM_PROMPT, build_prompt_ids, role_header_ids, without_role_header
from vidmini.reduce.prefusion import encode_frames_reduced
from vidmini.video.frames import FrameBatch, FrameGeometry


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
    system_prompt: str = SYSTEM_PROMPT
    prefusion_tokens: int | None = None  # LLaVA-Mini: VisionZip keeps K vision tokens for pre-fusion (None = exact)
    evidence: bool = False  # score each answer's attention to the frames (vidmini.model.relevance)
    evidence_layers: tuple[int, ...] | None = None  # LLM layers it reads; None = relevance.EVIDENCE_DEPTH of them


class TokenBuffer:
    """[capacity * C*C, H] on the device, allocated once; frames are written by index, never concatenated.
    Beside it, each frame's presentation time (seconds from the video's start): a frame's place in the LLM's
    sequence is its place here, so that is where an answer's evidence gets its time."""

    def __init__(self, capacity: int, tokens_per_frame: int, hidden: int, device, dtype):
        self.capacity, self.tokens_per_frame = capacity, tokens_per_frame
        self.data = torch.empty(capacity * tokens_per_frame, hidden, device=device, dtype=dtype)  # [F*C², H]
        self.times = torch.zeros(capacity, dtype=torch.float64)  # [F] seconds, on the CPU
        self.count = 0

    def write(self, tokens: torch.Tensor, times=None) -> None:
        """tokens [B, C*C, H] for the next B frames; times [B] their presentation times."""
        n = tokens.shape[0]
        if self.count + n > self.capacity:
            raise RuntimeError(f"token buffer full ({self.capacity} frames)")
        t = self.tokens_per_frame
        self.data[self.count * t : (self.count + n) * t] = tokens.reshape(n * t, -1)
        if times is not None:
            self.times[self.count : self.count + n] = torch.as_tensor(times, dtype=torch.float64)
        self.count += n

    def frames(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        end = self.count if end is None else min(end, self.count)
        return self.data[start * self.tokens_per_frame : end * self.tokens_per_frame]  # [(end-start)*C², H]

    @property
    def bytes_per_frame(self) -> int:
        return self.tokens_per_frame * self.data.shape[1] * self.data.element_size()


@dataclass(frozen=True)
class Relevance:
    """How much an answer attended to each frame of its range (vidmini.model.relevance), and when each frame is."""

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


@dataclass
class Encoded:
    """Everything the answers need after the pass over the frames."""

    buffer: TokenBuffer
    layout: FusionLayout | None  # LLaVA-Mini: where each question sits in pre-fusion
    questions: list[str]  # distinct questions, in layout order
    prompts: list[list[int]]
    text_sums: dict[tuple[int, int | None], torch.Tensor]  # LLaVA-Mini, per frame range: [S_text, H] fp32
    ranges: list[tuple[int, int | None]] = field(default_factory=list)  # distinct (start, end) of the queries

    @property
    def frames(self) -> int:
        return self.buffer.count


class MiniFrames:
    """LLaVA-Mini's way: per batch, CLIP + compressor + projector, then one pre-fusion pass with every question
    packed in; the frame tokens are question-independent, and each question's fused prompt is the mean over the
    frames of its range (summed in fp32). With `prefusion_tokens`, VisionZip keeps K of the 576 vision tokens
    for pre-fusion (vidmini.reduce.prefusion)."""

    def __init__(self, model, tokenizer, options: EngineOptions):
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.prefusion_tokens = options.prefusion_tokens
        cfg = model.config
        self.geometry = FrameGeometry()  # 336x336 squashed, as the reference
        self.mean, self.std = cfg.image_mean, cfg.image_std
        self.shape = cfg if self.prefusion_tokens is None else capacity.llava_mini_shape(cfg, self.prefusion_tokens)

    def prompt_ids(self, question: str) -> list[int]:
        return build_prompt_ids(self.tokenizer, question, self.options.system_prompt)

    def start(self, encoded: Encoded, device, dtype) -> None:
        encoded.layout = layout = FusionLayout.build(encoded.prompts)
        patches = self.model.model.vision_tower.num_patches
        prefix = None if self.prefusion_tokens is None else \
            min(self.prefusion_tokens, patches) + self.model.tokens_per_frame  # kept vision + compressed tokens
        self._mask = self.model.fusion_mask(layout, device, dtype, prefix)
        hidden = self.model.config.hidden_size
        encoded.text_sums = {r: torch.zeros(len(layout.text_ids), hidden, device=device) for r in encoded.ranges}

    def encode(self, pixels: torch.Tensor, stats: torch.Tensor, encoded: Encoded, recorder: Recorder,
               scratch: torch.Tensor | None = None):
        """(frame tokens [b, C*C, H], text [b, S_text, H]). scratch: float storage for the pixels (normalize)."""
        with recorder.stage("vision encode"):
            pv = normalize(pixels, stats, scratch)  # [b, 3, S, S] fp32 from uint8 [b, S, S, 3]
            if self.prefusion_tokens is None:
                vision, compressed = self.model.encode_frames(pv)
                positions = None
            else:
                vision, compressed, positions = encode_frames_reduced(self.model, pv, self.prefusion_tokens)
        with recorder.stage("pre-fusion"):
            return self.model.fuse(vision, compressed, encoded.layout, self._mask, positions)

    @staticmethod
    def accumulate(encoded: Encoded, text: torch.Tensor, first: int, end: int) -> None:
        for (start, stop), total in encoded.text_sums.items():
            lo, hi = max(start, first), min(end if stop is None else stop, end)
            if hi > lo:
                total += text[lo - first : hi - first].float().sum(0)

    def pieces(self, encoded: Encoded, key, count: int, index: int):
        """(prefix [n, H], suffix [m, H]) of one question over one range: the fused prompt around <image>."""
        mean = encoded.text_sums[key] / count  # [S_text, H] fp32: the frames' average, as the reference
        prompt = self.model.fused_prompt(encoded.layout, index, mean)  # [L, H]
        at = encoded.prompts[index].index(IMAGE_TOKEN_INDEX)
        return prompt[:at], prompt[at + 1 :]

    def after_frames(self) -> torch.Tensor:
        return self.model.model.embed_tokens.weight[:0]  # [0, H]: nothing follows LLaVA-Mini's frame tokens


class PlainFrames:
    """A video VLM whose frame tokens need no question (vidmini.backends.hf_video): per batch, the backend's
    K tokens per frame; per question, its own prompt embedded around [frames | video_end]."""

    def __init__(self, model, tokenizer, options: EngineOptions):
        if options.prefusion_tokens is not None:
            raise UsageError(f"--prefusion-tokens is for LLaVA-Mini; this model is {model.family} "
                             "(use --tokens-per-frame)")
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.geometry, self.mean, self.std = model.geometry, model.image_mean, model.image_std
        self.shape = model.frame_shape

    def prompt_ids(self, question: str) -> list[int]:
        prefix, suffix = self.model.prompt(question)
        return prefix + [self.model.config.video_token_id] * len(self.model.video_end()) + suffix

    def start(self, encoded: Encoded, device, dtype) -> None:
        pass

    def encode(self, pixels: torch.Tensor, stats: torch.Tensor, encoded: Encoded, recorder: Recorder,
               scratch: torch.Tensor | None = None):
        with recorder.stage("vision encode"):
            pv = normalize(pixels, stats, scratch)  # [b, 3, S, S] fp32 from uint8 [b, S, S, 3]
            return self.model.encode_frames(pv), None  # [b, K, H]

    @staticmethod
    def accumulate(encoded: Encoded, text, first: int, end: int) -> None:
        pass

    def pieces(self, encoded: Encoded, key, count: int, index: int):
        """(prefix [n, H], suffix [m, H]): the model's own prompt, embedded. The video's end tokens
        (after_frames) are the same for every question, so the engine prefills them once with the frames."""
        prefix, suffix = self.model.prompt(encoded.questions[index])
        return self.model.embed(prefix), self.model.embed(suffix)

    def after_frames(self) -> torch.Tensor:
        return self.model.video_end()  # [n, H]


def frame_strategy(model, tokenizer, options: EngineOptions):
    """LLaVA-Mini (pre-fusion with the questions) or a plain per-frame token model."""
    return MiniFrames(model, tokenizer, options) if hasattr(model, "fuse") else PlainFrames(model, tokenizer, options)


class Engine:
    def __init__(self, model, tokenizer, options: EngineOptions | None = None, recorder: Recorder | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.options = options or EngineOptions()
        self.device = model.device
        self.dtype = model.compute_dtype
        self.recorder = recorder or Recorder(device=str(self.device))
        self.frames = frame_strategy(model, tokenizer, self.options)
        self.geometry = self.frames.geometry
        self.shape = self.frames.shape  # what a frame costs (vidmini.capacity)
        self.stats = pixel_stats(self.frames.mean, self.frames.std).to(self.device)
        self.batch_size = self.options.batch_size or capacity.auto_batch_size(self.shape, self.dtype, self.device)
        self.measured_kv_bytes_per_token: int | None = None  # from the real cache tensors, after an answer
        self.role_header = role_header_ids(tokenizer)  # never part of an answer (answer_tokens)

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
        buffer = TokenBuffer(capacity, self.model.tokens_per_frame, hidden, self.device, self.dtype)
        ranges = list(dict.fromkeys((q.start, q.end) for q in queries))
        prompts = [self.prompt_ids(q) for q in questions]
        encoded = Encoded(buffer, None, questions, prompts, {}, ranges)
        self.frames.start(encoded, self.device, self.dtype)
        # On the CPU the float pixels of every batch go to one buffer kept for the pass (see PixelBuffer); CUDA's
        # caching allocator reuses memory by itself.
        scratch = PixelBuffer(self.device) if self.device.type == "cpu" else None
        for batch in self._timed(batches):
            first = start = buffer.count
            for frame_tokens, text in self._encoded(batch.frames, encoded, scratch):
                buffer.write(frame_tokens, batch.times_s[first - start : first - start + len(frame_tokens)])
                self.frames.accumulate(encoded, text, first, buffer.count)
                first = buffer.count
            if on_batch:
                on_batch(batch)
        return encoded

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
        """(frame tokens [b, K, H], text [b, S_text, H] or None) for the batch, in pieces small enough to fit."""
        pixels = torch.from_numpy(frames).to(self.device)  # [B, S, S, 3] uint8: 4x less to move than floats
        lo = 0
        while lo < len(pixels):
            size = min(self.batch_size, len(pixels) - lo)
            piece = pixels[lo : lo + size]
            out = scratch.take(piece.numel()) if scratch is not None else None
            try:
                result = self.frames.encode(piece, self.stats, encoded, self.recorder, out)
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
        from vidmini.model.relevance import QueryCapture, evidence_layers

        decoder = self.model.get_decoder()
        layers = self.options.evidence_layers or evidence_layers(len(decoder.layers))
        return QueryCapture(decoder, list(layers))

    def _answer_range(self, encoded: Encoded, queries, key, members, on_token, on_evidence=None):
        """[prefix | frames | after the frames | suffix] per question; the first three once when every question's
        prefix is the same, each question then continuing from the rewound cache."""
        start, end = queries[members[0]].frame_range(encoded.frames)
        count = max(1, end - start)
        frames = encoded.buffer.frames(start, end)  # [(end-start)*K, H]: a view of the buffer, never copied
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
        cache = new_cache(self.model, shared_len + longest + max_new)
        if same_prefix:
            with self.recorder.stage("LLM prefill"):
                self._prefill([shared, frames, after], cache, 0)
        capture = self._capture()
        recording = capture.recording if capture else nullcontext
        for i, (prefix, suffix) in zip(members, embeds):
            after_frames = len(prefix) + len(frames) + len(after)  # the first position after the video
            with self.recorder.stage("LLM prefill"), recording(after_frames):
                if same_prefix:
                    cache.rewind(shared_len)
                    logits = self._prefill([suffix], cache, shared_len)
                else:
                    cache.rewind(0)
                    logits = self._prefill([prefix, frames, after, suffix], cache, 0)
            with self.recorder.stage("answer decode"), recording(after_frames):
                emit = (lambda t, i=i: on_token(i, t)) if on_token else None
                tokens = decode(self.model, logits, shared_len + len(suffix), cache, max_new, eos, pick, emit)
            self._measure_cache(cache, shared_len + longest + max_new)
            if capture:
                with self.recorder.stage("evidence"):
                    answer, baseline = capture.frame_attention(
                        cache, len(prefix), end - start, encoded.buffer.tokens_per_frame,
                        queries_from=after_frames + len(suffix) - 1)  # the question's last position on
                    capture.clear()
                if on_evidence:
                    times = encoded.buffer.times[start:end].clone()
                    on_evidence(i, Relevance(answer.cpu(), baseline.cpu(), times, capture.layers))
            yield tokens

    def _prefill(self, pieces, cache, start):
        while True:
            try:
                return prefill(self.model, pieces, cache, self.options.chunk, start)
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

    def answer_tokens(self, tokens: list[int]) -> list[int] | None:
        """The answer's tokens without the role header the model may write first; None while they may still be
        that header (prompt.without_role_header)."""
        return without_role_header(tokens, self.role_header)

    def decode_text(self, tokens: list[int]) -> str:
        visible = self.answer_tokens(tokens)
        return self.tokenizer.decode(tokens if visible is None else visible, skip_special_tokens=True).strip()


def build_engine(load, options: EngineOptions, profile_memory: bool = False, questions=(),
                 max_question_tokens: int | None = None) -> Engine:
    """Load the model (vidmini.model.loading.LoadOptions) and wrap it in an Engine; the load is timed as a stage.
    `questions` (summarize's --question) are held to `max_question_tokens` as soon as the tokenizer is there, as
    `ask` holds its own."""
    from vidmini.model.loading import check_before_load, load_model, pick_device
    from vidmini.questions import DEFAULT_MAX_QUESTION_TOKENS, check_length

    check_before_load(load, options.max_new_tokens, options.prefusion_tokens)  # from the config: before the weights
    recorder = Recorder(memory=profile_memory, device=pick_device(load.device))
    with recorder.stage("load"):
        model, tokenizer = load_model(load)
    check_length(tokenizer, list(questions), max_question_tokens or DEFAULT_MAX_QUESTION_TOKENS)
    return Engine(model, tokenizer, options, recorder)
