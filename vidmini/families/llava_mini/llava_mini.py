"""The LLaVA-Mini model: vision tower -> compressor -> projector -> pre-fusion -> Llama (docs/llava-mini.md §0-2).

State-dict names are the checkpoint's own (§4.2), so loading is a plain safetensors load:
  model.vision_tower.vision_tower.vision_model.*, model.compressor.*, model.mm_projector.*,
  model.prefusion_layers.*, and the usual Llama model.embed_tokens / model.layers / model.norm / lm_head.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)

from vidmini.engine import capacity
from vidmini.infra.internals import ignore_missing_keys, llama_forward
from vidmini.families.llava_mini import adapter
from vidmini.families.llava_mini.checkpoint import TOWER_KEYS_PATTERN, expected_missing, finish_loading, prepare_config
from vidmini.families.llava_mini.compressor import Compressor
from vidmini.families.llava_mini.conv_vision import MODEL_TYPE as CONV_MODEL_TYPE
from vidmini.families.llava_mini.conv_vision import ConvVisionTower
from vidmini.families.llava_mini.config import LlavaMiniConfig, vision_prefix_len
from vidmini.families.llava_mini.prefusion import IMAGE_TOKEN_INDEX, FusionLayout, additive_mask, run_prefusion
from vidmini.families.llava_mini.projector import build_projector
from vidmini.families.llava_mini.vision import VisionTower

# Set by from_pretrained while it builds a model: patterns of the weights its checkpoint leaves to another source.
_EXPECTED_MISSING: ContextVar[tuple[str, ...]] = ContextVar("vidmini_expected_missing", default=())
_LLAMA_FORWARD = llama_forward()  # checked once, at import


class LlavaMiniModel(LlamaModel):
    config_class = LlavaMiniConfig

    def __init__(self, config: LlavaMiniConfig):
        super().__init__(config)
        if config.vision_config is None:
            raise ValueError("LlavaMiniConfig.vision_config is unset: load through from_pretrained, which resolves it")
        self.vision_tower = build_vision_tower(config)
        self.compressor = Compressor(config.compressor_size, config.compressor_dim, config.compressor_heads)
        self.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, config.hidden_size)
        self.prefusion_layers = nn.ModuleList(
            [LlamaDecoderLayer(config, layer_idx=i) for i in range(config.prefusion_layer_num)]
        )
        self.post_init()


class LlavaMiniForCausalLM(LlamaForCausalLM):
    config_class = LlavaMiniConfig
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def __init__(self, config: LlavaMiniConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaMiniModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        adapter.attach(self.model.layers, config)  # after post_init: B must stay zero
        ignore_missing_keys(self, _EXPECTED_MISSING.get())

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.MultiheadAttention):
            nn.init.normal_(module.in_proj_weight, std=std)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, Compressor):
            nn.init.normal_(module.query, std=std)
            module.reset_positions()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        kwargs["config"] = prepare_config(pretrained_model_name_or_path, kwargs.get("config"), kwargs)
        kwargs["output_loading_info"] = True
        want_info = kwargs.pop("_vidmini_loading_info", False)
        # The released checkpoint may leave the CLIP tower to `mm_vision_tower`: those keys are then expected to be
        # missing (filled in by finish_loading), and transformers must not report them as "newly initialized".
        patterns = expected_missing(pretrained_model_name_or_path, kwargs["config"])
        token = _EXPECTED_MISSING.set(tuple(patterns))
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        finally:
            _EXPECTED_MISSING.reset(token)
        finish_loading(model, pretrained_model_name_or_path, info, TOWER_KEYS_PATTERN in patterns)
        return (model, info) if want_info else model

    # ---- properties used by the engine -------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return capacity.tokens_per_frame(self.config)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def vision_prefix_len(self) -> int:
        """Tokens before the prompt in the pre-fusion sequence: vision tokens + compressed tokens."""
        return vision_prefix_len(self.config)

    # ---- vision -------------------------------------------------------------------------------------------
    def encode_frames(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [T, 3, S, S] or [T, P, 3, S, S] (P = r*r + 1 parts in HD mode) ->
        vision tokens for pre-fusion [T, Nv, H] and projected compressed tokens [T, C*C, H]."""
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        T, P = pixel_values.shape[:2]
        feats = self.model.vision_tower(pixel_values.flatten(0, 1))  # [T*P, N, Dv]
        feats = feats.to(next(self.model.mm_projector.parameters()).dtype)  # the reference casts CLIP output back
        feats = feats.view(T, P, *feats.shape[1:])  # [T, P, N, Dv]
        if P == 1:
            to_compress, vision = feats[:, 0], feats[:, 0]  # [T, N, Dv]
        else:
            r = self.config.resolution_ratio
            to_compress = stitch_parts(feats[:, : r * r], r)  # [T, r*r*N, Dv]
            vision = torch.cat([to_compress, feats[:, -1]], dim=1)  # [T, (r*r+1)*N, Dv]
        compressed = self.model.compressor(to_compress)  # [T, C*C, Dv]
        return self.model.mm_projector(vision), self.model.mm_projector(compressed)

    # ---- pre-fusion ---------------------------------------------------------------------------------------
    def fusion_mask(self, layout: FusionLayout, device, dtype, prefix_len: int | None = None) -> torch.Tensor:
        """prefix_len: vision + compressed tokens in the sequence (fewer with VisionZip before pre-fusion)."""
        prefix_len = self.vision_prefix_len if prefix_len is None else prefix_len
        return additive_mask(layout.attention_allowed(prefix_len).to(device), dtype)

    def fuse(
        self, vision: torch.Tensor, compressed: torch.Tensor, layout: FusionLayout, mask: torch.Tensor | None = None,
        vision_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """vision [B, Nv, H], compressed [B, C*C, H] -> (frame tokens [B, C*C, H], packed text outputs [B, S_text, H]).

        vision_positions [B, Nv]: positions of the vision tokens when they are a VisionZip subset (ascending raster
        indices); the compressed and text tokens then keep the positions of the exact path."""
        B, prefix = vision.shape[0], vision.shape[1] + compressed.shape[1]
        text = self.model.embed_tokens(layout.text_ids.to(vision.device))  # [S_text, H]
        x = torch.cat([vision, compressed, text.unsqueeze(0).expand(B, -1, -1)], dim=1)  # [B, S, H]
        if mask is None:
            mask = self.fusion_mask(layout, x.device, x.dtype, prefix)
        positions = layout.positions(prefix)  # [S]
        if vision_positions is not None:
            full = self.vision_prefix_len
            after = layout.positions(full)[full - compressed.shape[1] :].to(x.device)  # [C*C + S_text]
            positions = torch.cat([vision_positions, after.expand(B, -1)], dim=1)  # [B, S]
        out = run_prefusion(self.model.prefusion_layers, self.model.rotary_emb, x, positions, mask)
        return out[:, vision.shape[1] : prefix], out[:, prefix:]

    def fused_prompt(self, layout: FusionLayout, index: int, text_mean: torch.Tensor) -> torch.Tensor:
        """One prompt's LLM-side embeddings [L, H]: fused outputs at kept tokens, raw embeddings at padding tokens.
        text_mean [S_text, H] is the packed text output averaged over frames."""
        ids = torch.tensor(layout.prompts[index], device=text_mean.device).clamp(min=0)
        embeds = self.model.embed_tokens(ids).clone()  # [L, H]
        gather = layout.gather[index].to(text_mean.device)
        embeds[layout.kept[index].to(text_mean.device)] = text_mean[gather].to(embeds.dtype)
        return embeds

    # ---- reference-compatible calls -------------------------------------------------------------------------
    def llm_pieces(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """[fused prompt before <image> | frame tokens | fused prompt after], each [n, H], as the reference builds it."""
        ids = input_ids[0].tolist()
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError("input_ids must hold the image placeholder -200 exactly once")
        layout = FusionLayout.build([ids])
        vision, compressed = self.encode_frames(pixel_values.to(self.device))
        frame_tokens, text = self.fuse(vision, compressed, layout)  # [T, C*C, H], [T, S_text, H]
        text_mean = text.float().sum(0) / text.shape[0]  # [S_text, H], fp32 as the reference
        prompt = self.fused_prompt(layout, 0, text_mean)  # [L, H]
        at = ids.index(IMAGE_TOKEN_INDEX)
        return [prompt[:at], frame_tokens.flatten(0, 1), prompt[at + 1 :]]

    def language_forward(self, **kwargs):
        """The plain Llama forward (no vision): inputs_embeds/input_ids, cache, positions, logits_to_keep."""
        return _LLAMA_FORWARD(self, **kwargs)

    def forward(self, input_ids=None, pixel_values=None, inputs_embeds=None, **kwargs):
        """With pixel_values: the reference forward, logits [1, N, V] over the multimodal sequence."""
        if pixel_values is not None:
            inputs_embeds = torch.cat(self.llm_pieces(input_ids, pixel_values)).unsqueeze(0)  # [1, N, H]
            input_ids = None
        return self.language_forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, **kwargs):
        """transformers' `generate`, with every option it takes (streamer, sampling, beams, ...). With pixel_values,
        the multimodal embeddings are built as the reference builds them and generation starts from them, so the
        result holds the new tokens only (transformers' contract for `inputs_embeds`)."""
        if pixel_values is None:
            return super().generate(input_ids=input_ids, **kwargs)
        if "inputs_embeds" in kwargs:
            raise ValueError("pass input_ids with pixel_values, or inputs_embeds alone, not both")
        embeds = torch.cat(self.llm_pieces(input_ids, pixel_values)).unsqueeze(0)  # [1, N, H]
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)  # [1, N]
        return super().generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    def eos_ids(self, override: int | list[int] | None = None) -> set[int]:
        eos = override if override is not None else getattr(self.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.config.eos_token_id
        return set([eos] if isinstance(eos, int) else (eos or []))


def build_vision_tower(config: LlavaMiniConfig) -> nn.Module:
    """CLIP (the released model) or the small convolutional tower (the demo), by the vision config's model_type."""
    vision = dict(config.vision_config)
    if vision.get("model_type") == CONV_MODEL_TYPE:
        return ConvVisionTower(vision)
    return VisionTower(CLIPVisionConfig.from_dict(vision), config.mm_vision_select_layer,
                       config.mm_vision_select_feature)


def stitch_parts(parts: torch.Tensor, ratio: int) -> torch.Tensor:
    """[T, r*r, g*g, D] sub-image grids (row-major) -> one [T, (r*g)*(r*g), D] raster (docs/llava-mini.md §3)."""
    T, _, N, D = parts.shape
    g = int(N**0.5)
    grid = parts.view(T, ratio, ratio, g, g, D).transpose(2, 3)  # [T, r, g, r, g, D]
    return grid.reshape(T, ratio * g * ratio * g, D)

