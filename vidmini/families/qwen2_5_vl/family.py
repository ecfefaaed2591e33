"""Qwen2.5-VL behind vidmini's frame-model interface (vidmini.families.interface; docs/qwen2_5_vl.md).

A unit is temporal_patch_size (2) consecutive frames: the engine hands `encode` whole units (completing the last
by repeating the video's last frame, as the processor pads), and each unit leaves its merged tokens, or the K per
frame (2K per unit) that VisionZip keeps, in the buffer with their (row, col). Each video's frames are what the
checkpoint's video processor makes of them: `smart_resize` of the video's display size within the processor's
min/max pixels (`geometry_for`), resized bicubic with antialiasing from the full-resolution decoded frame (the
decoder does it frame by frame, vidmini.inputs.video.frames). Its other steps are the ones
vidmini.families.qwen2_5_vl.preprocess writes (the engine normalises as (v/255 - mean)/std, the processor as
(v - 255 mean)/(255 std): the same to within a float32 rounding). The prompt is the checkpoint's chat template
with the video before the question; M-RoPE positions come from vidmini.families.qwen2_5_vl.positions.
"""

from __future__ import annotations

import json
import math
import os

import torch

from vidmini.engine import capacity
from vidmini.families.hf_video.backend import read_chat_template, read_preprocessor
from vidmini.errors import ModelLoadError, UsageError
from vidmini.families.interface import Family, FramePass, FrameModel, UnitTokens, VideoSpan
from vidmini.families.qwen2_5_vl.positions import video_positions
from vidmini.families.qwen2_5_vl.preprocess import VideoSettings, patchify, smart_resize
from vidmini.families.qwen2_5_vl.vision import UnitEncoder
from vidmini.inputs.video.frames import BICUBIC, FrameGeometry

MODEL_TYPE = "qwen2_5_vl"


def frame_geometry(settings: VideoSettings, width: int, height: int) -> FrameGeometry:
    """The processor's frame for a video displayed at width x height: smart_resize within its min/max pixels."""
    h, w = smart_resize(height, width, settings.factor, settings.min_pixels, settings.max_pixels)
    return FrameGeometry(h, None, w, BICUBIC)


def largest_geometry(settings: VideoSettings) -> FrameGeometry:
    """The largest square frame the processor makes (of a square video at its max_pixels): the geometry before a
    video is known, so that checks made then (--tokens-per-frame, the answer's room) hold for every video."""
    side = math.isqrt(settings.max_pixels)
    return frame_geometry(settings, side, side)


def native_tokens_per_unit(geometry: FrameGeometry, settings: VideoSettings) -> int:
    return (geometry.height // settings.factor) * (geometry.width // settings.factor)


def unit_budget(tokens_per_frame: int | None, settings: VideoSettings, name: str) -> int | None:
    """--tokens-per-frame K as tokens kept per unit (K per frame: K x frames per unit), None for the model's own;
    UsageError (exit 2) above what the model gives its largest frame (a smaller video keeps all it has)."""
    if tokens_per_frame is None:
        return None
    native = native_tokens_per_unit(largest_geometry(settings), settings)
    per_frame = native / settings.temporal_patch_size
    if tokens_per_frame > per_frame:
        raise UsageError(f"--tokens-per-frame {tokens_per_frame}: {name} has {per_frame:g} tokens per frame "
                         f"({native} per unit of {settings.temporal_patch_size} frames); give at most that many")
    return min(native, tokens_per_frame * settings.temporal_patch_size)


def prompt_split(tokenizer, video_token: int, question: str) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids) of the chat template's prompt, the video before the question, around its one
    video placeholder."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    ids = tokenizer(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)).input_ids
    if ids.count(video_token) != 1:
        raise ModelLoadError(f"the chat template gave {ids.count(video_token)} video placeholders, expected 1")
    at = ids.index(video_token)
    return ids[:at], ids[at + 1 :]


class QwenFrames(FrameModel):
    """A loaded Qwen2_5_VLForConditionalGeneration as a vidmini frame model."""

    family = MODEL_TYPE

    def __init__(self, model, tokenizer, settings: VideoSettings | None = None, keep: int | None = None,
                 geometry: FrameGeometry | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = model.config
        self.settings = settings or VideoSettings()
        self.frames_per_unit = self.settings.temporal_patch_size
        vision = model.config.vision_config
        if (vision.temporal_patch_size, vision.patch_size) != (self.frames_per_unit, self.settings.patch_size):
            raise ModelLoadError("the video preprocessor's patch sizes do not match the model's vision config")
        self.keep = keep
        self._geometry = geometry or largest_geometry(self.settings)
        p = self.settings.patch_size
        self.encoder = UnitEncoder(model.model.visual, self._geometry.height // p, self._geometry.width // p, keep)
        self._prompts: dict[str, tuple[list[int], list[int]]] = {}

    # ---- frames in -------------------------------------------------------------------------------------------
    @property
    def geometry(self) -> FrameGeometry:
        return self._geometry

    def geometry_for(self, width: int, height: int) -> FrameGeometry:
        return frame_geometry(self.settings, width, height)

    def at(self, geometry: FrameGeometry) -> QwenFrames:
        if geometry == self._geometry:
            return self
        view = QwenFrames(self.model, self.tokenizer, self.settings, self.keep, geometry)
        view._prompts = self._prompts  # the prompts do not depend on the frames' size
        return view

    @property
    def image_mean(self) -> list[float]:
        return list(self.settings.image_mean)

    @property
    def image_std(self) -> list[float]:
        return list(self.settings.image_std)

    # ---- what a unit costs -----------------------------------------------------------------------------------
    @property
    def tokens_per_unit(self) -> int:
        return self.encoder.tokens_per_unit

    @property
    def native_tokens_per_unit(self) -> int:
        return self.encoder.native

    @property
    def shape(self) -> capacity.FrameShape:
        return unit_shape(self.config, self.settings, self.tokens_per_unit, self._geometry)

    # ---- the prompt ------------------------------------------------------------------------------------------
    def split(self, question: str) -> tuple[list[int], list[int]]:
        if question not in self._prompts:
            self._prompts[question] = prompt_split(self.tokenizer, self.config.video_token_id, question)
        return self._prompts[question]

    def prompt_ids(self, question: str) -> list[int]:
        prefix, suffix = self.split(question)
        return prefix + suffix  # the placeholder becomes the frames' tokens

    # ---- the pass over the frames ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor, frame_pass: FramePass) -> UnitTokens:
        """[U * 2, 3, H, W] normalised -> UnitTokens [U, K, H] with each token's (row, col)."""
        patches, (units, _, _) = patchify(pixel_values, self.settings)
        return self.encoder(patches, units)

    def pieces(self, frame_pass: FramePass, key, frames: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        prefix, suffix = self.split(frame_pass.questions[index])
        return self.embed(prefix), self.embed(suffix)

    def embed(self, ids: list[int]) -> torch.Tensor:
        emb = self.model.get_input_embeddings()
        return emb(torch.tensor(ids, device=emb.weight.device))  # [L, H]

    def after_frames(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight[:0]  # [0, H]: <|vision_end|> opens the suffix

    def positions(self, prefix: int, span: VideoSpan, after: int):
        merged = (self._geometry.height // self.settings.factor, self._geometry.width // self.settings.factor)
        return video_positions(prefix, span.times, span.grid, span.tokens_per_unit, span.frames_per_unit,
                               self.config.vision_config.tokens_per_second, merged)

    # ---- the LLM ---------------------------------------------------------------------------------------------
    def language_forward(self, *, inputs_embeds, position_ids, cache, logits_to_keep: int):
        return self.model(inputs_embeds=inputs_embeds, position_ids=position_ids, cache=cache, use_cache=True,
                          logits_to_keep=logits_to_keep)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_decoder(self):
        """The text model (its layers and M-RoPE rotary embedding): --evidence re-scores its attention at the
        positions `positions` gives."""
        return self.model.get_decoder()

    def eos_ids(self) -> set[int]:
        """The generation config's (Qwen's list <|im_end|> and <|endoftext|>), else the tokenizer's end of turn."""
        eos = self.model.generation_config.eos_token_id
        return set(torch.tensor(eos if eos is not None else self.tokenizer.eos_token_id).flatten().tolist())

    # ---- the memory report -----------------------------------------------------------------------------------
    def weight_parts(self) -> dict:
        visual = self.model.model.visual
        return {"vision_tower": visual.blocks, "patch_embed": visual.patch_embed, "merger": visual.merger}

    def parameters(self):
        return self.model.parameters()


def unit_shape(config, settings: VideoSettings, tokens: int, geometry: FrameGeometry) -> capacity.FrameShape:
    """What a unit of 2 frames of `geometry` costs: K tokens in the LLM; the vision tower over all of the unit's
    patches."""
    vision = config.vision_config
    patches = (geometry.height // settings.patch_size) * (geometry.width // settings.patch_size)
    return capacity.FrameShape(config.get_text_config(), tokens,
                               {"hidden_size": vision.hidden_size, "intermediate_size": vision.intermediate_size},
                               patches, frames_per_unit=settings.temporal_patch_size)


def read_settings(folder: str) -> VideoSettings:
    """The video processor's settings from the file transformers' video processor loads them from: the nested
    "video_processor" of processor_config.json, else video_preprocessor_config.json, else the image processor's
    preprocessor_config.json (whose min/max_pixels then become the video's size, as Qwen2VLVideoProcessor's
    constructor maps them; docs/qwen2_5_vl.md, "Frame size")."""
    config = None
    nested = os.path.join(folder, "processor_config.json")
    if os.path.isfile(nested):
        with open(nested) as f:
            config = json.load(f).get("video_processor")
    config = config or read_preprocessor(folder)
    if config.get("cap_pixels_per_frame"):
        # The processor then shares a whole-video pixel budget among the frames it is given, which ties each
        # frame's size to the number of frames; vidmini sizes a video's frames before it knows how many fit.
        raise ModelLoadError(f"{folder}: cap_pixels_per_frame in the video processor's config is not supported "
                             "(frame sizes that depend on the frame count)")
    return VideoSettings.from_config(config)


def load_tokenizer(folder: str, name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {name} has no usable tokenizer files ({str(err).splitlines()[0]})")
    tokenizer.chat_template = read_chat_template(folder) or tokenizer.chat_template
    if not tokenizer.chat_template:
        raise ModelLoadError(f"model {name} has no chat template (chat_template.jinja or chat_template.json)")
    return tokenizer


class QwenFamily(Family):
    model_types = (MODEL_TYPE,)
    name = "Qwen2.5-VL"

    def frame_shape(self, folder: str, options, prefusion_tokens: int | None,
                    display: tuple[int, int] | None = None) -> capacity.FrameShape:
        from transformers import AutoConfig

        self._refuse(options, prefusion_tokens)
        settings = read_settings(folder)
        keep = unit_budget(options.tokens_per_frame, settings, options.model)
        geometry = frame_geometry(settings, *display) if display else largest_geometry(settings)
        native = native_tokens_per_unit(geometry, settings)
        return unit_shape(AutoConfig.from_pretrained(folder), settings, min(keep or native, native), geometry)

    def load(self, folder: str, options, device: str, dtype) -> tuple[QwenFrames, object]:
        from transformers import Qwen2_5_VLForConditionalGeneration

        self._refuse(options, None)
        settings = read_settings(folder)
        keep = unit_budget(options.tokens_per_frame, settings, options.model)
        tokenizer = load_tokenizer(folder, options.model)
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"model {options.model} could not be loaded: {str(err).splitlines()[0]}")
        model.to(device).eval()
        return QwenFrames(model, tokenizer, settings, keep), tokenizer

    def adapt(self, model, tokenizer, options=None, prefusion_tokens: int | None = None) -> FrameModel:
        if isinstance(model, FrameModel):
            return model
        if prefusion_tokens is not None:
            raise UsageError("--prefusion-tokens is for LLaVA-Mini; this model is Qwen2.5-VL (use --tokens-per-frame)")
        folder = options.folder() if options is not None else None
        settings = read_settings(folder) if folder else VideoSettings()  # the processor's defaults otherwise
        keep = unit_budget(options.tokens_per_frame, settings, options.model) if options is not None else None
        return QwenFrames(model, tokenizer, settings, keep)

    def meta_model(self, folder: str) -> QwenFrames:
        from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(folder))
        return QwenFrames(model, None, read_settings(folder))

    def prompt_length(self, folder: str, questions: list[str]) -> int:
        from transformers import AutoConfig

        tokenizer = load_tokenizer(folder, folder)
        video = AutoConfig.from_pretrained(folder).video_token_id
        return max(sum(map(len, prompt_split(tokenizer, video, q))) for q in questions)

    @staticmethod
    def _refuse(options, prefusion_tokens: int | None) -> None:
        for flag, value in (("--quantize", options.quantize != "none"), ("--vision-fp32", options.vision_fp32),
                            ("--prefusion-tokens", prefusion_tokens is not None)):
            if value:
                raise UsageError(f"{flag} is for LLaVA-Mini checkpoints; {options.model} is Qwen2.5-VL")


FAMILY = QwenFamily()
