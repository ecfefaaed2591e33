"""CLIP vision tower: the selected hidden layer's patch features, no post-LayerNorm (docs/llava-mini.md §1.1)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from vidmini.reduce.encoder import EncoderLayout, read_layer


class ClipHolder(nn.Module):
    """Keeps the checkpoint's `vision_model.` level, which transformers 5's CLIPVisionModel no longer has."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class VisionTower(nn.Module):
    """State-dict names `vision_tower.vision_tower.vision_model.*`, as in the checkpoint."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if select_feature != "patch":
            # 'cls_patch' gives 1 + 24*24 tokens; the compressor's key positions need a square grid, and the
            # reference crashes on it too. Refuse it up front rather than fail inside the first frame.
            raise ValueError(f"mm_vision_select_feature {select_feature!r} is not supported by LLaVA-Mini; use 'patch'")
        self.vision_tower = ClipHolder(config)
        self.select_feature = select_feature
        layers = config.num_hidden_layers
        # hidden_states has layers+1 entries (the embeddings first): entry k is the output of k layers.
        self.layers_to_run = select_layer if select_layer >= 0 else layers + 1 + select_layer
        if not 1 <= self.layers_to_run <= layers:
            raise ValueError(f"mm_vision_select_layer {select_layer} selects no layer of a {layers}-layer tower")

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def num_patches(self) -> int:
        cfg = self.vision_tower.vision_model.config
        return (cfg.image_size // cfg.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] -> patch features [B, P, D]."""
        # Only the layers up to the selected one run (vidmini.reduce.encoder.read_layer, the one place that runs
        # an encoder to a layer): hidden_states[-2] needs 23 of CLIP-L's 24 layers.
        layout = EncoderLayout.of(self.vision_tower.vision_model)
        x = read_layer(layout, pixel_values.to(self.dtype), self.layers_to_run - 1).outputs  # [B, 1+P, D]
        return x[:, 1:]  # [B, P, D], CLS dropped

    def zip_signals(self, pixel_values: torch.Tensor):
        """VisionZip's signals for `--prefusion-tokens` over the patches this tower emits (vidmini.reduce.prefusion):
        the selected layer's features, head-averaged keys and CLS attention, the CLS entry dropped from each."""
        from vidmini.reduce.visionzip import LayerSignals, layer_signals

        s = layer_signals(self.vision_tower.vision_model, pixel_values.to(self.dtype), self.layers_to_run - 1)
        return LayerSignals(s.hidden[:, 1:], s.metric[:, 1:], s.scores[:, 1:], has_cls=False)  # [B, P, ...]
