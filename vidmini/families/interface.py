"""What a model family must provide so that vidmini can stream a video through it (docs/families.md).

Two objects per family, both declared here and nowhere else:

- `Family`: the registry's entry (vidmini.families.registry), keyed by the checkpoint's `model_type`. It answers
  from the checkpoint's folder alone (config, tokenizer files; no weights): what a frame costs for the capacity
  rules and the dry run, whether the options suit it, and how to load it.
- `FrameModel`: the loaded model as the engine uses it. It turns frames into LLM tokens and the LLM's answers
  out of them; everything the engine, `ask`, the capacity rules and the memory report need is a member here, so
  none of them asks what family it holds.

The data flow (docs/architecture.md): decoded frames [B, H, W, 3] uint8 at the video's geometry
(`geometry_for` its display size; the family's view of that geometry is `at(geometry)`) -> normalised by the engine with
`image_mean` / `image_std` -> `encode` (the vision tower, per frame) -> `fuse` (the family's own step that mixes
in the questions, LLaVA-Mini's pre-fusion; identity elsewhere) -> `UnitTokens` written into the token buffer ->
per question `[prefix | frame tokens | after_frames | suffix]` through `language_forward` with the KV cache, at
the positions `positions` gives.

Units: some families encode several consecutive frames together (Qwen2.5-VL's temporal patch covers 2 frames).
A *unit* is `frames_per_unit` consecutive frames; the buffer, the cache and the capacity rules count tokens per
unit (`tokens_per_unit`). For the one-frame families (LLaVA-Mini, LLaVA-NeXT-Video, LLaVA-OneVision) a unit is a
frame, and "tokens per frame" is `tokens_per_unit`. The engine hands `encode` whole units: it holds back an
incomplete unit until the next batch, and completes the last one by repeating the video's last frame (as the
Qwen processors pad a clip to a multiple of the temporal patch).

Registering a family: subclass both, then add one line to vidmini.families.registry (see docs/families.md).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vidmini.families.checkpoint_files import DEFAULT_MODEL

if TYPE_CHECKING:  # the interface is imported before torch is (vidmini --help stays instant)
    import torch
    from torch import nn

    from vidmini.engine.capacity import FrameShape
    from vidmini.inputs.video.frames import FrameGeometry


@dataclass
class LoadOptions:
    """What loading a checkpoint is asked for (the CLI's --model, --device, --dtype, ... ); a family refuses the
    options that are not for it."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    vision_fp32: bool = False
    tokens_per_frame: int | None = None  # K tokens per unit by VisionZip (None = native); not for LLaVA-Mini

    def folder(self) -> str | None:
        """`model` when it is a local folder: where `Family.adapt` reads the processor settings that a model's
        weights and config do not carry (frame size, normalisation); None for a Hub id or a source's name."""
        return self.model if os.path.isdir(self.model) else None


# ---- what flows between the engine and a family ------------------------------------------------------------------
@dataclass
class UnitTokens:
    """A batch of encoded units, ready for the token buffer."""

    tokens: torch.Tensor  # [U, K, H]: K LLM-ready tokens per unit, in the order the LLM reads them
    grid: torch.Tensor | None = None  # [U, K, G] int64: each token's place inside its unit (e.g. (row, col) of the
    # merged patch grid), kept through token reduction so a reduced token keeps the position it had; None = no grid


@dataclass
class VideoSpan:
    """The frames of one query's range as they sit in the token buffer: what `positions` needs."""

    units: int  # encoded units in the range
    tokens_per_unit: int  # K
    frames_per_unit: int
    times: torch.Tensor  # [units * frames_per_unit] float64: presentation times in seconds (padding repeats the last)
    grid: torch.Tensor | None  # [units * K, G] int64 as UnitTokens.grid gave it, or None

    @property
    def tokens(self) -> int:
        return self.units * self.tokens_per_unit


@dataclass
class FramePass:
    """One pass over the frames for a set of questions. The engine fills the fields below; a family that needs
    per-pass state (LLaVA-Mini's pre-fusion layout and per-range sums) subclasses it in `begin`."""

    questions: list[str]  # distinct questions, in order
    prompts: list[list[int]]  # each question's `prompt_ids`
    ranges: list[tuple[int, int | None]]  # distinct (first frame, end frame or None) of the queries
    extra: dict[str, Any] = field(default_factory=dict)  # free for a family's own bookkeeping
    buffer: Any = None  # the engine's token buffer (vidmini.engine.token_buffer.TokenBuffer), set once `begin` returns

    @property
    def frames(self) -> int:
        """Frames delivered into the buffer so far."""
        return self.buffer.frame_count


class Positions(ABC):
    """The LLM positions of one sequence [prefix | frame tokens | after_frames | suffix | answer...], by the
    index of each token in the KV cache. The engine asks for them chunk by chunk while it prefills and one at a
    time while it decodes, so a family never has to materialise the positions of a long video at once."""

    @abstractmethod
    def ids(self, start: int, count: int, device) -> torch.Tensor:
        """position_ids for cache indices start..start+count, in the shape the family's `language_forward` takes:
        [1, count] for 1-D RoPE; e.g. [3, 1, count] (time, row, column) for M-RoPE."""


class LinearPositions(Positions):
    """1-D RoPE: a token's position is its index in the cache (LLaVA-Mini, the LLaVA video backends)."""

    def ids(self, start: int, count: int, device) -> torch.Tensor:
        import torch

        return torch.arange(start, start + count, device=device).unsqueeze(0)  # [1, count]


# ---- the loaded model --------------------------------------------------------------------------------------------
class FrameModel(ABC):
    """A loaded frame model, as the engine, `ask`, the capacity rules and the memory report use it."""

    family: str  # the checkpoint's model_type; for messages and the --json output only, never for branching
    config: Any  # the model's whole transformers config (the KV cache reads the LLM's layers and heads from it)
    frames_per_unit: int = 1  # consecutive frames encoded together (see the module docstring)
    fusion_stage: str | None = None  # the timing stage of `fuse` ("pre-fusion"), or None when `fuse` is identity

    # ---- frames in ---------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def geometry(self) -> FrameGeometry:
        """How a decoded frame becomes the model's input (size, crop, resize) before a video is known, and for
        every video of a family whose frames do not depend on the video (the LLaVA families' squares)."""

    def geometry_for(self, width: int, height: int) -> FrameGeometry:
        """The frame geometry for a video (or image) displayed at width x height (rotation applied): the decoder
        resizes to it. Default: the fixed `geometry`."""
        return self.geometry

    def at(self, geometry: FrameGeometry) -> FrameModel:
        """This model for frames of `geometry` (what `geometry_for` gave): the same weights, with the tokens per
        unit and the cost of a unit (`shape`) that frames of that size have. Default: itself (fixed geometry)."""
        return self

    @property
    @abstractmethod
    def image_mean(self) -> list[float]:
        """Per-channel mean of the model's pixel normalisation (0..1 scale)."""

    @property
    @abstractmethod
    def image_std(self) -> list[float]:
        """Per-channel standard deviation of the model's pixel normalisation."""

    def image_frame(self, image) -> Any:
        """A still image (PIL) as one frame [H, W, 3] uint8 the way the model's own image path prepares it, or
        None to treat it as one frame of a video at `geometry` (the default)."""
        return None

    # ---- what a unit costs -------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def tokens_per_unit(self) -> int:
        """K: LLM tokens each unit leaves in the buffer and the KV cache (after --tokens-per-frame's reduction)."""

    @property
    @abstractmethod
    def native_tokens_per_unit(self) -> int:
        """The tokens per unit the model itself gives; --tokens-per-frame may ask for at most this many."""

    @property
    @abstractmethod
    def shape(self) -> FrameShape:
        """What a unit costs, for vidmini.engine.capacity (the LLM config, K, the vision and fusion work per unit)."""

    @property
    def device(self) -> torch.device:
        """Where the weights are: the LLM's token embedding's device (every family keeps one device)."""
        return self.get_input_embeddings().weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The LLM's dtype: the token buffer and the KV cache hold it. The token embedding's, which stays in the
        LLM's dtype where other parts differ (--vision-fp32) or are quantized (--quantize)."""
        return self.get_input_embeddings().weight.dtype

    # ---- the prompt --------------------------------------------------------------------------------------------
    @abstractmethod
    def prompt_ids(self, question: str) -> list[int]:
        """The whole prompt for one question, in the family's chat format with the video before the question, as
        token ids; its length (not counting frame tokens) is what the capacity rules reserve for the prompt.
        Families with a fusion step also read their layout from it (`begin`)."""

    # ---- the pass over the frames ------------------------------------------------------------------------------
    def begin(self, frame_pass: FramePass, device, dtype) -> FramePass:
        """Prepare one pass over the frames (masks, per-range accumulators); return the state that `fuse` and
        `pieces` receive. The default keeps the engine's fields as they are."""
        return frame_pass

    @abstractmethod
    def encode(self, pixel_values: torch.Tensor, frame_pass: FramePass) -> Any:
        """pixel_values [U * frames_per_unit, 3, H, W] float, normalised -> the vision side's output for U units
        (whatever `fuse` takes; for a family without fusion, the UnitTokens themselves)."""

    def fuse(self, encoded: Any, frame_pass: FramePass, first_frame: int) -> UnitTokens:
        """The family's fusion step on `encode`'s output (run under the `fusion_stage` timing), for the units
        starting at buffer frame `first_frame` (so per-range state can be kept). Default: `encode` already gave
        the UnitTokens."""
        return encoded

    @abstractmethod
    def pieces(self, frame_pass: FramePass, key: tuple[int, int | None], frames: int,
               index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(prefix [n, H], suffix [m, H]): the embedded prompt of question `index` around its frames, for the
        query range `key` that covers `frames` frames."""

    @abstractmethod
    def after_frames(self) -> torch.Tensor:
        """[n, H]: tokens the model puts after a video's last frame, the same for every question ([0, H]: none)."""

    def positions(self, prefix: int, span: VideoSpan, after: int) -> Positions:
        """The LLM positions of [prefix tokens | span's frame tokens | `after` tokens | everything later], as the
        model's own forward would give them. Default: 1-D, the cache index."""
        return LinearPositions()

    # ---- the LLM ------------------------------------------------------------------------------------------------
    @abstractmethod
    def language_forward(self, *, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache,
                         logits_to_keep: int):
        """The LLM alone over inputs_embeds [1, n, H] at `position_ids` (from `positions`), writing into the KV
        cache (a transformers Cache); returns an output with `.logits` [1, n or logits_to_keep, V]."""

    @abstractmethod
    def get_input_embeddings(self) -> nn.Embedding:
        """The LLM's token embedding (decoding feeds each answer token back through it)."""

    @abstractmethod
    def get_decoder(self) -> nn.Module:
        """The LLM's decoder (its `layers` and `rotary_emb`), where --evidence re-scores attention."""

    @abstractmethod
    def eos_ids(self) -> set[int]:
        """Token ids that end an answer."""

    # ---- the memory report -------------------------------------------------------------------------------------
    @abstractmethod
    def weight_parts(self) -> dict[str, nn.Module]:
        """Modules whose weights --profile-memory reports apart from the LLM's (the LLM is all the rest)."""

    @abstractmethod
    def parameters(self):
        """Every parameter of the model (the memory report counts them)."""


# ---- the registry's entry ----------------------------------------------------------------------------------------
class Family(ABC):
    """A model family as the registry knows it: config-level answers (no weights) and the loader."""

    model_types: tuple[str, ...]  # the config.json `model_type`s this family runs
    name: str  # in words, for messages ("LLaVA-Mini")
    quantized_parts: tuple[str, ...] = ()  # weight parts --quantize narrows (the dry run's weight estimate);
    # empty: the family refuses --quantize

    @abstractmethod
    def frame_shape(self, folder: str, options: LoadOptions, prefusion_tokens: int | None,
                    display: tuple[int, int] | None = None) -> FrameShape:
        """What a unit costs, from the checkpoint's config alone, for frames of a video displayed at `display`
        (width, height; None: before a video is known, the most a unit may cost); raises UsageError (exit 2) when
        an option does not suit the family (--tokens-per-frame above native, --prefusion-tokens elsewhere than
        LLaVA-Mini)."""

    @abstractmethod
    def load(self, folder: str, options: LoadOptions, device: str, dtype) -> tuple[Any, Any]:
        """(model, tokenizer) from a local checkpoint folder, on `device`: a FrameModel, or the family's own model
        class when callers use it as such (LLaVA-Mini's), which `adapt` then wraps. ModelLoadError (exit 4) in one
        line when it cannot."""

    @abstractmethod
    def adapt(self, model, tokenizer, options: LoadOptions | None = None,
              prefusion_tokens: int | None = None) -> FrameModel:
        """A FrameModel around a transformers model built elsewhere (tests, benches, a caller's own load), asked
        for what `frame_shape` is asked for: the load options (--tokens-per-frame; `options.folder()`, when there
        is one, for the processor settings; None = every default) and --prefusion-tokens. A FrameModel is
        returned as it is; an option that is not for the family is refused as `frame_shape` refuses it."""

    @abstractmethod
    def meta_model(self, folder: str) -> FrameModel:
        """The model built on the meta device (no memory, no weights read): the dry run counts its parameters."""

    @abstractmethod
    def prompt_length(self, folder: str, questions: list[str]) -> int:
        """The longest of the questions' `prompt_ids`, from the checkpoint's tokenizer files alone (dry run)."""


class CheckpointSource(ABC):
    """Where a --model value that is neither a Hub id nor a plain checkpoint folder comes from (the demo model):
    registered in vidmini.families.registry beside the families, consulted before the Hub."""

    @abstractmethod
    def claims(self, model_id: str) -> bool:
        """Whether this source answers for `model_id` (a name such as "demo", or a folder of its own layout)."""

    @abstractmethod
    def resolve(self, model_id: str) -> str:
        """A local checkpoint folder that the family's `load` reads as any other (prepared on first use)."""

    @abstractmethod
    def config_folder(self, model_id: str) -> str:
        """A folder holding the checkpoint's config.json and tokenizer files, without preparing the weights."""
