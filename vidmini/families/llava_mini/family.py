"""LLaVA-Mini as a frame model (docs/families.md): CLIP + compressor + projector per frame, then one pre-fusion pass
with every question packed in (docs/llava-mini.md in the brief; vidmini.families.llava_mini.prefusion). The frame tokens are
question-independent; each question's fused prompt is the mean over the frames of its range, summed in fp32.
With `prefusion_tokens`, VisionZip keeps K of the vision tokens for pre-fusion (vidmini.reduce.prefusion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidmini.engine import capacity
from vidmini.errors import ModelLoadError, UsageError
from vidmini.families.interface import Family, FramePass, FrameModel, UnitTokens
from vidmini.families.registry import NAMES
from vidmini.families.llava_mini.config import MODEL_TYPE, LlavaMiniConfig, vision_prefix_len
from vidmini.families.llava_mini.prefusion import IMAGE_TOKEN_INDEX, FusionLayout
from vidmini.families.llava_mini.prompt import build_prompt_ids
from vidmini.inputs.video.frames import FrameGeometry


def frame_shape(config, prefusion_tokens: int | None = None) -> capacity.FrameShape:
    """LLaVA-Mini's frame: C*C tokens. Exact: CLIP and pre-fusion both sized by the whole vision prefix + a prompt
    (the rule vidmini has used since phase 1). With `prefusion_tokens`: CLIP over all patches, pre-fusion over the
    K kept + the compressed tokens + a prompt. A config's `max_video_frames` (the demo model's) caps the frames."""
    vision, tokens = dict(config.vision_config), capacity.tokens_per_frame(config)
    prefix, trained = vision_prefix_len(config), capacity.trained_frames(config)
    if prefusion_tokens is None:
        seq = prefix + capacity.PROMPT_TOKENS_GUESS
        return capacity.FrameShape(config, tokens, vision, seq, seq, max_frames=trained)
    patches = prefix - tokens
    kept = min(prefusion_tokens, patches)
    return capacity.FrameShape(config, tokens, vision, patches, kept + tokens + capacity.PROMPT_TOKENS_GUESS,
                               max_frames=trained)


@dataclass
class MiniPass(FramePass):
    """Pre-fusion's state for one pass: where each question sits, the attention mask, and per query range the
    sum over its frames of the fused prompt tokens [S_text, H] fp32."""

    layout: FusionLayout | None = None
    mask: torch.Tensor | None = None
    text_sums: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)


class MiniFrames(FrameModel):
    """A LlavaMiniForCausalLM (vidmini.families.llava_mini.llava_mini) behind the frame-model interface."""

    family = MODEL_TYPE
    fusion_stage = "pre-fusion"

    def __init__(self, model, tokenizer, prefusion_tokens: int | None = None):
        self.model, self.tokenizer, self.prefusion_tokens = model, tokenizer, prefusion_tokens
        self.config = model.config

    geometry = property(lambda self: FrameGeometry(), doc="336x336 squashed, as the reference")
    image_mean = property(lambda self: self.config.image_mean)
    image_std = property(lambda self: self.config.image_std)

    def image_frame(self, image):
        """The reference's image path: pad to a square with the mean colour (or crop), then CLIP's resize."""
        from vidmini.inputs.preprocess import process_image

        return process_image(image, self.config.image_aspect_ratio, self.config.image_mean)

    tokens_per_unit = property(lambda self: capacity.tokens_per_frame(self.config))
    native_tokens_per_unit = tokens_per_unit
    shape = property(lambda self: frame_shape(self.config, self.prefusion_tokens))

    def prompt_ids(self, question: str) -> list[int]:
        return build_prompt_ids(self.tokenizer, question)

    def begin(self, frame_pass: FramePass, device, dtype) -> MiniPass:
        layout = FusionLayout.build(frame_pass.prompts)
        patches = self.model.model.vision_tower.num_patches
        prefix = None if self.prefusion_tokens is None else \
            min(self.prefusion_tokens, patches) + self.tokens_per_unit  # kept vision + compressed tokens
        hidden = self.config.hidden_size
        sums = {r: torch.zeros(len(layout.text_ids), hidden, device=device) for r in frame_pass.ranges}
        return MiniPass(**vars(frame_pass), layout=layout, mask=self.model.fusion_mask(layout, device, dtype, prefix),
                        text_sums=sums)

    def encode(self, pixel_values: torch.Tensor, frame_pass: MiniPass):
        """(vision tokens [b, Nv, H], compressed [b, C*C, H], kept positions [b, K] or None)."""
        if self.prefusion_tokens is None:
            return (*self.model.encode_frames(pixel_values), None)
        from vidmini.reduce.prefusion import encode_frames_reduced

        return encode_frames_reduced(self.model, pixel_values, self.prefusion_tokens)

    def fuse(self, encoded, frame_pass: MiniPass, first_frame: int) -> UnitTokens:
        vision, compressed, positions = encoded
        tokens, text = self.model.fuse(vision, compressed, frame_pass.layout, frame_pass.mask, positions)
        end = first_frame + len(tokens)
        for (start, stop), total in frame_pass.text_sums.items():
            lo, hi = max(start, first_frame), min(end if stop is None else stop, end)
            if hi > lo:
                total += text[lo - first_frame : hi - first_frame].float().sum(0)
        return UnitTokens(tokens)

    def pieces(self, frame_pass: MiniPass, key, frames: int, index: int):
        """The fused prompt around <image>, from the frames' average over the range (as the reference)."""
        mean = frame_pass.text_sums[key] / frames  # [S_text, H] fp32
        prompt = self.model.fused_prompt(frame_pass.layout, index, mean)  # [L, H]
        at = frame_pass.prompts[index].index(IMAGE_TOKEN_INDEX)
        return prompt[:at], prompt[at + 1 :]

    def after_frames(self) -> torch.Tensor:
        return self.model.model.embed_tokens.weight[:0]  # [0, H]: nothing follows LLaVA-Mini's frame tokens

    def language_forward(self, **kwargs):
        return self.model.language_forward(**kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_decoder(self):
        return self.model.get_decoder()

    def eos_ids(self) -> set[int]:
        return self.model.eos_ids()

    def weight_parts(self) -> dict:
        core = self.model.model
        return {"vision_tower": core.vision_tower, "compressor": core.compressor, "projector": core.mm_projector,
                "prefusion": core.prefusion_layers}

    def parameters(self):
        return self.model.parameters()


def _refuse_tokens_per_frame(options) -> None:
    if options.tokens_per_frame is not None:
        others = ", ".join(t for t in NAMES if t != MODEL_TYPE)
        raise UsageError(f"--tokens-per-frame is for the other video VLMs ({others}); "
                         "LLaVA-Mini keeps one token per frame (see --prefusion-tokens)")


class LlavaMini(Family):
    model_types = (MODEL_TYPE,)
    name = NAMES[MODEL_TYPE]
    quantized_parts = ("llm", "prefusion")

    def frame_shape(self, folder, options, prefusion_tokens=None, display=None) -> capacity.FrameShape:
        _refuse_tokens_per_frame(options)
        from vidmini.families.llava_mini.checkpoint import prepare_config

        return frame_shape(prepare_config(folder, LlavaMiniConfig.from_pretrained(folder), {}), prefusion_tokens)

    def load(self, folder, options, device, dtype):
        """(LlavaMiniForCausalLM, tokenizer): the model as transformers' code would use it; the engine adapts it."""
        import torch
        from transformers import AutoTokenizer

        from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM

        cpu_int8 = options.quantize == "8bit" and device == "cpu"
        quant = None if cpu_int8 else quantization_config(options.quantize, dtype)
        try:
            extra = {"quantization_config": quant, "device_map": {"": device}} if quant else {}
            model = LlavaMiniForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"model {options.model} could not be loaded: {str(err).splitlines()[0]}")
        if not quant:
            model.to(device)
        if cpu_int8:
            quantize_on_cpu(model)
        if options.vision_fp32:
            model.model.vision_tower.to(torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError):
            raise ModelLoadError(f"model {options.model} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
        return model, tokenizer

    def adapt(self, model, tokenizer, options=None, prefusion_tokens=None) -> FrameModel:
        if options is not None:
            _refuse_tokens_per_frame(options)
        return model if isinstance(model, MiniFrames) else MiniFrames(model, tokenizer, prefusion_tokens)

    def meta_model(self, folder) -> FrameModel:
        from vidmini.families.llava_mini.checkpoint import prepare_config
        from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM

        config = prepare_config(folder, LlavaMiniConfig.from_pretrained(folder), {})
        with torch.device("meta"):
            return MiniFrames(LlavaMiniForCausalLM(config), None)

    def prompt_length(self, folder, questions) -> int:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        return max(len(build_prompt_ids(tokenizer, q)) for q in questions or [""])


def quantize_on_cpu(model) -> None:
    """--quantize 8bit on a CPU: the parts bitsandbytes narrows on a GPU (the LLM's layers and pre-fusion), plus
    the output head, the largest matrix a decode step reads, in weight-only int8 (vidmini.families.int8_cpu)."""
    from vidmini.families.int8_cpu import Int8Linear, check_kernel, quantize_linears

    check_kernel()
    quantize_linears([model.model.layers, model.model.prefusion_layers])
    model.lm_head = Int8Linear(model.lm_head)  # untied from the embedding, which lookups keep reading in full


def quantization_config(quantize: str, dtype):
    """bitsandbytes' config for --quantize; the vision parts and the compressor stay in full precision, as the
    reference's --load-8bit does."""
    if quantize == "none":
        return None
    import importlib.util

    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise ModelLoadError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); none is available "
                             "(on a CPU, --quantize 8bit runs vidmini's own int8 weights)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"--quantize {quantize} needs bitsandbytes: pip install 'vidmini[quantize]'")
    keep = ["vision_tower", "compressor", "mm_projector", "lm_head"]
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  llm_int8_skip_modules=keep)
    raise ModelLoadError(f"unknown --quantize {quantize!r}; use auto, none, 8bit or 4bit")


FAMILY = LlavaMini()
