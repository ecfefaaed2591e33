"""Hugging Face video VLMs as per-frame token sources, optionally reduced by VisionZip (prototype for issue 13).

Two families that transformers ships natively, loaded with their own classes:

| family | vision tower | layer | tokens per frame (native) | after the last frame |
|---|---|---|---|---|
| `llava_next_video` (LlavaNextVideoForConditionalGeneration) | CLIP-L/14-336, CLS dropped ("default") | -2 | 24x24 -> 2x2 average pool -> 144 | nothing |
| `llava_onevision` (LlavaOnevisionForConditionalGeneration) | SigLIP-384/14, 26 layers, no CLS | -1 | 27x27 -> projector -> bilinear -> 14x14 = 196 | one `image_newline` |

(transformers 5.24: `get_video_features` of each model; the processors expand `<video>` to frames x 144, or
frames x 196 + 1.)

With `tokens_per_frame=K` below the native count, each frame keeps K tokens chosen by VisionZip **in the token
space the LLM sees per frame**, i.e. after the model's own pooling: the features are pooled by the model's own
code, and the scores (attention mass) and keys are pooled over the same 2-D cells, as the VisionZip ports for
LLaVA-OneVision / LLaVA-Video do (HoliTom, DyToK). So K = native (or more) is exactly the model's own output, and
smaller K keeps D dominant + C contextual tokens with D:C = 54:10 (the paper's 64-token split).
Frames are independent and question-independent, so the tokens can be cached per video.

A VideoBackend is a frame model (vidmini.families.interface.FrameModel, docs/families.md) for the same streaming
engine as LLaVA-Mini: `encode_frames` gives [B, K, H] LLM-ready tokens per frame, `video_end` what follows a frame
range, `prompt` the model's own chat format split around its single `<video>` placeholder, `embed` /
`language_forward` / `eos_ids` the LLM side, and `geometry` / `image_mean` / `image_std` / `shape` what the
decoder, the normalisation and vidmini.engine.capacity need, read from the checkpoint's own preprocessor config, chat
template and config. `FAMILY` is the registry's entry; loading (vidmini.families.loading) locates the folder.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F

from vidmini.engine import capacity
from vidmini.errors import ModelLoadError, UsageError
from vidmini.families.interface import Family, FrameModel, UnitTokens
from vidmini.families.registry import NAMES
from vidmini.reduce.visionzip import Budget, layer_signals, select_and_merge, split_budget
from vidmini.inputs.video.frames import FrameGeometry

FAMILIES = ("llava_next_video", "llava_onevision")
END_TOKENS = {"llava_next_video": 0, "llava_onevision": 1}  # tokens after a video's last frame (video_end)


class FrameBudget(Budget):
    """K tokens per frame as D dominant + C contextual (vidmini.reduce.visionzip.Budget)."""

    @classmethod
    def split(cls, k: int) -> FrameBudget:
        """K tokens -> D + C at the paper's ratio (54:10 at K = 64; vidmini.reduce.visionzip.split_budget)."""
        return cls(*split_budget(k))


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B, N, F] with N a square -> [B, F, g, g]."""
    g = math.isqrt(x.shape[1])
    if g * g != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens are not a square grid")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], g, g), g


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, F, h, w] -> [B, h*w, F]."""
    return x.flatten(2).transpose(1, 2)


class VideoBackend(FrameModel):
    """Per-frame LLM-ready tokens [T, K, H] from one of the two families, and the model's prompt around them."""

    # Read from the checkpoint's preprocessor config by `load` (absent for a model built in memory).
    geometry: FrameGeometry | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __init__(self, model, tokens_per_frame: int | None = None, budget: FrameBudget | None = None,
                 tokenizer=None, preprocessor: dict | None = None):
        family = model.config.model_type
        if family not in FAMILIES:
            raise ValueError(f"unsupported model type {family!r}; supported: {', '.join(FAMILIES)}")
        if not isinstance(model.config.vision_feature_layer, int):
            raise NotImplementedError("several vision feature layers are not supported")
        self.model, self.family, self.core = model, family, model.model
        self.native_tokens_per_frame = native_tokens_per_frame(model.config, family)
        if budget is None and tokens_per_frame is not None and tokens_per_frame < self.native_tokens_per_frame:
            budget = FrameBudget.split(tokens_per_frame)
        self.budget = budget  # None: the model's own tokens
        self.tokenizer = tokenizer  # with the checkpoint's chat template
        self.config = model.config  # the whole config: transformers' StaticCache reads its text config from it
        if preprocessor is not None:
            self.geometry, self.image_mean, self.image_std = frame_geometry(preprocessor)

    @property
    def tokens_per_frame(self) -> int:
        return self.native_tokens_per_frame if self.budget is None else self.budget.dominant + self.budget.contextual

    tokens_per_unit = tokens_per_frame  # a unit is one frame here
    native_tokens_per_unit = property(lambda self: self.native_tokens_per_frame)

    @property
    def shape(self) -> capacity.FrameShape:
        return frame_shape(self.model.config, self.tokens_per_frame)

    def weight_parts(self) -> dict:
        """Modules whose weights --profile-memory reports apart from the LLM's."""
        return {"vision_tower": self.core.vision_tower, "projector": self.core.multi_modal_projector}

    def parameters(self):
        return self.model.parameters()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_decoder(self):
        """The LLM's decoder (its layers and rotary embedding), where --evidence re-scores attention."""
        return self.model.get_decoder()

    # ---- the engine's side (vidmini.families.interface) -------------------------------------------------------
    def prompt_ids(self, question, *processor_form):
        """The prompt with one placeholder per token after the frames (their count is what the prompt costs).
        Called as prompt_ids(processor, question), as before the interface, it returns prompt_ids_with's split."""
        if processor_form:
            return self.prompt_ids_with(question, *processor_form)
        prefix, suffix = self.prompt(question)
        return prefix + [self.model.config.video_token_id] * len(self.video_end()) + suffix

    def encode(self, pixel_values: torch.Tensor, frame_pass) -> UnitTokens:
        return UnitTokens(self.encode_frames(pixel_values))  # [b, K, H]

    def pieces(self, frame_pass, key, frames: int, index: int):
        """The model's own prompt, embedded. The video's end tokens (after_frames) are the same for every
        question, so the engine prefills them once with the frames."""
        prefix, suffix = self.prompt(frame_pass.questions[index])
        return self.embed(prefix), self.embed(suffix)

    def after_frames(self) -> torch.Tensor:
        return self.video_end()

    def eos_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.model.config.get_text_config().eos_token_id
        return set([eos] if isinstance(eos, int) else (eos or []))

    def video_end(self) -> torch.Tensor:
        """Tokens after the last frame of a video: [1, H] (OneVision's newline) or [0, H]."""
        newline = self.core.image_newline[None]  # [1, H]
        return newline if self.family == "llava_onevision" else newline[:0]

    @torch.no_grad()
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [T, 3, S, S] (the model's video processor output for T frames) -> [T, K, H]."""
        pixel_values = pixel_values.to(self.core.vision_tower.dtype)
        if self.budget is None:
            return self._native(pixel_values)
        if self.family == "llava_next_video":
            return self._reduced_next_video(pixel_values)
        return self._reduced_onevision(pixel_values)

    def _native(self, pixel_values: torch.Tensor) -> torch.Tensor:
        t = pixel_values.shape[0]
        out = self.core.get_video_features(pixel_values[None], return_dict=True).pooler_output  # [1, T*K (+1), H]
        return out[0, : t * self.native_tokens_per_frame].view(t, self.native_tokens_per_frame, -1)

    def _signals(self, pixel_values: torch.Tensor):
        cfg = self.model.config
        s = layer_signals(self.core.vision_tower, pixel_values, cfg.vision_feature_layer)
        hidden, metric, scores = s.hidden, s.metric, s.scores  # [T, N, Dv], [T, N, d], [T, N]
        if cfg.vision_feature_select_strategy == "default":  # the model drops token 0; so do its scores and keys
            hidden, metric, scores = hidden[:, 1:], metric[:, 1:], scores[:, 1:]
        return hidden, metric, scores

    def _reduced_next_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden, metric, scores = self._signals(pixel_values)
        stride = self.model.config.spatial_pool_stride
        pooled = self.core.vision_resampler(hidden)  # [T, K0, Dv] the model's own pooling
        cell_scores = _flat(F.avg_pool2d(_grid(scores[..., None])[0], stride) * stride**2)[..., 0]  # mass per cell
        cell_metric = _flat(F.avg_pool2d(_grid(metric)[0], stride))  # [T, K0, d]
        tokens, _ = select_and_merge(pooled, cell_metric, cell_scores, *self._split(), has_cls=False)
        return self.core.multi_modal_projector(tokens)  # [T, K, H]

    def _reduced_onevision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden, metric, scores = self._signals(pixel_values)
        pooled = self.core.apply_pooling(self.core.multi_modal_projector(hidden))  # [T, K0, H] the model's own
        side = math.isqrt(pooled.shape[1])

        def like_pooling(x):  # the same bilinear resize as apply_pooling, on scores and keys
            return _flat(F.interpolate(_grid(x)[0], size=(side, side), mode="bilinear"))

        cell_scores = like_pooling(scores[..., None])[..., 0]
        tokens, _ = select_and_merge(pooled, like_pooling(metric), cell_scores, *self._split(), has_cls=False)
        return tokens

    def _split(self) -> tuple[int, int]:
        return self.budget.dominant, self.budget.contextual

    # ---- the LLM side ----------------------------------------------------------------------------------------
    def prompt(self, question: str) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around the frames, in the checkpoint's own chat format."""
        return self.prompt_ids_with(self.tokenizer, question)

    def prompt_ids_with(self, processor, question: str) -> tuple[list[int], list[int]]:
        """The model's own chat format for one video + question, split around the (single) video placeholder."""
        return split_prompt(processor, self.model.config.video_token_id, question)

    def embed(self, ids: list[int]) -> torch.Tensor:
        emb = self.model.get_input_embeddings()
        return emb(torch.tensor(ids, device=emb.weight.device))  # [L, H]

    def language_forward(self, **kwargs):
        """The LLM alone (inputs_embeds, position_ids, cache, logits_to_keep): no pixels, so no placeholder check."""
        return self.model(**kwargs)


def split_prompt(processor, video_token_id: int, question: str) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids): a chat template's one-video conversation, the video before the question, split
    around its single video placeholder."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = tokenizer(text).input_ids
    if ids.count(video_token_id) != 1:
        raise ValueError(f"the chat template gave {ids.count(video_token_id)} video placeholders, expected 1")
    at = ids.index(video_token_id)
    return ids[:at], ids[at + 1 :]


def frame_shape(config, tokens: int) -> capacity.FrameShape:
    """What a frame costs (vidmini.engine.capacity), from the config alone: K tokens of the LLM; the vision tower over
    all its patches."""
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2 + (config.model_type == "llava_next_video")  # + CLIP's CLS
    vision = {"hidden_size": vc.hidden_size, "intermediate_size": vc.intermediate_size}
    return capacity.FrameShape(config.get_text_config(), tokens, vision, patches)


def frame_geometry(config: dict) -> tuple[FrameGeometry, list[float], list[float]]:
    """(geometry, mean, std) from the checkpoint's (video) preprocessor config: a shortest-edge resize + centre crop
    (NeXT-Video, CLIP's steps) or a squash to height x width (OneVision). Read as a file, not through the processor
    classes (which need torchvision): vidmini decodes and normalises frames itself. It resizes nearest-neighbour
    where the processor uses bicubic, so the frames differ by resampling only."""
    size, crop = dict(config.get("size") or {}), dict(config.get("crop_size") or {})
    if config.get("do_center_crop") and crop:
        if crop["height"] != crop["width"] or "shortest_edge" not in size:
            raise ModelLoadError(f"unsupported video preprocessor geometry: size {size}, crop {crop}")
        geometry = FrameGeometry(crop["height"], crop["height"] / size["shortest_edge"])
    elif "height" in size and size["height"] == size["width"]:
        geometry = FrameGeometry(size["height"])
    elif "shortest_edge" in size:  # no crop: the square input the tower takes at that size
        geometry = FrameGeometry(size["shortest_edge"])
    else:
        raise ModelLoadError(f"unsupported video preprocessor geometry: size {size}")
    scale = config.get("rescale_factor", 1 / 255)
    if abs(scale - 1 / 255) > 1e-9 or not config.get("do_normalize", True):
        raise ModelLoadError(f"unsupported video preprocessor: rescale {scale}, normalize {config.get('do_normalize')}")
    return geometry, list(config["image_mean"]), list(config["image_std"])


PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json")


def read_preprocessor(path: str) -> dict:
    """The video preprocessor's settings (the image preprocessor's when the checkpoint has no video one)."""
    for name in PREPROCESSOR_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as f:
                return json.load(f)
    raise ModelLoadError(f"{path} has no {' or '.join(PREPROCESSOR_FILES)}: the frame size and normalisation "
                         "come from it")


def read_chat_template(path: str) -> str | None:
    """The processor's chat template (the model's prompt format), where transformers saves it."""
    for name in TEMPLATE_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        with open(file) as f:
            if name.endswith(".jinja"):
                return f.read()
            template = json.load(f).get("chat_template")
        if template:
            return template
    return None


def model_class(family: str):
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    return {"llava_next_video": LlavaNextVideoForConditionalGeneration,
            "llava_onevision": LlavaOnevisionForConditionalGeneration}[family]


def load_tokenizer(path: str, name: str):
    """The checkpoint's tokenizer with the processor's chat template (the model's prompt format)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {name} has no usable tokenizer files ({str(err).splitlines()[0]})")
    template = read_chat_template(path) or tokenizer.chat_template
    if not template:
        raise ModelLoadError(f"model {name} has no chat template (chat_template.jinja or chat_template.json)")
    tokenizer.chat_template = template
    return tokenizer


def load(path: str, family: str, name: str, device: str, dtype, tokens_per_frame: int | None = None):
    """(VideoBackend, tokenizer) from a local checkpoint folder, with the model's own transformers class, its
    tokenizer and chat template, and its preprocessor's geometry. Errors are one line (ModelLoadError, exit 4)."""
    preprocessor = read_preprocessor(path)
    tokenizer = load_tokenizer(path, name)
    try:
        model = model_class(family).from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"model {name} could not be loaded: {str(err).splitlines()[0]}")
    model.to(device).eval()
    check_tokens_per_frame(model.config, family, name, tokens_per_frame)
    return VideoBackend(model, tokens_per_frame, tokenizer=tokenizer, preprocessor=preprocessor), tokenizer


def native_tokens_per_frame(config, family: str) -> int:
    """The tokens per frame the model's own pooling gives (from its config alone)."""
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return (grid // config.spatial_pool_stride) ** 2 if family == "llava_next_video" else math.ceil(grid / 2) ** 2


def check_tokens_per_frame(config, family: str, name: str, tokens_per_frame: int | None) -> None:
    native = native_tokens_per_frame(config, family)
    if tokens_per_frame is not None and tokens_per_frame > native:
        raise UsageError(f"--tokens-per-frame {tokens_per_frame}: {name} has {native} tokens per frame; give at "
                         "most that many")


class HFVideo(Family):
    """LLaVA-NeXT-Video and LLaVA-OneVision, with transformers' own classes."""

    model_types = FAMILIES
    name = " / ".join(NAMES[t] for t in FAMILIES)

    def frame_shape(self, folder, options, prefusion_tokens=None, display=None) -> capacity.FrameShape:
        config = _config(folder)
        check_tokens_per_frame(config, config.model_type, options.model, options.tokens_per_frame)
        if prefusion_tokens is not None:
            raise _prefusion_refused(options.model, config.model_type)
        return frame_shape(config, options.tokens_per_frame or native_tokens_per_frame(config, config.model_type))

    def load(self, folder, options, device, dtype):
        family = _config(folder).model_type
        for flag, value in (("--quantize", options.quantize != "none"), ("--vision-fp32", options.vision_fp32)):
            if value:
                raise UsageError(f"{flag} is for LLaVA-Mini checkpoints; {options.model} is {family}")
        return load(folder, family, options.model, device, dtype, options.tokens_per_frame)

    def adapt(self, model, tokenizer, options=None, prefusion_tokens=None) -> FrameModel:
        family = model.config.model_type
        if prefusion_tokens is not None:
            raise _prefusion_refused("this model", family)
        if isinstance(model, VideoBackend):
            return model
        if options is None:
            return VideoBackend(model, tokenizer=tokenizer)
        check_tokens_per_frame(model.config, family, options.model, options.tokens_per_frame)
        folder = options.folder()
        return VideoBackend(model, options.tokens_per_frame, tokenizer=tokenizer,
                            preprocessor=read_preprocessor(folder) if folder else None)

    def meta_model(self, folder) -> FrameModel:
        config = _config(folder)
        with torch.device("meta"):
            return VideoBackend(model_class(config.model_type)(config))

    def prompt_length(self, folder, questions) -> int:
        config = _config(folder)
        tokenizer = load_tokenizer(folder, folder)
        split = [split_prompt(tokenizer, config.video_token_id, q) for q in questions or [""]]
        return max(len(p) + len(s) for p, s in split) + END_TOKENS[config.model_type]


def _config(folder: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _prefusion_refused(name: str, family: str) -> UsageError:
    return UsageError(f"--prefusion-tokens is for LLaVA-Mini; {name} is {family} (use --tokens-per-frame)")


FAMILY = HFVideo()
