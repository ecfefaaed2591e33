"""CLIP vision tower: the selected hidden layer's patch features, no post-LayerNorm (docs/llava-mini.md §1.1)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class ClipHolder(nn.Module):
    """Keeps the checkpoint's `vision_model.` level, which transformers 5's CLIPVisionModel no longer has."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class VisionTower(nn.Module):
    """State-dict names `vision_tower.vision_tower.vision_model.*`, as in the checkpoint."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unsupported mm_vision_select_feature {select_feature!r}")
        self.vision_tower = ClipHolder(config)
        self.select_feature = select_feature
        layers = config.num_hidden_layers
        # hidden_states has layers+1 entries (the embeddings first): entry k is the output of k layers.
        self.layers_to_run = select_layer if select_layer >= 0 else layers + 1 + select_layer

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def num_patches(self) -> int:
        cfg = self.vision_tower.vision_model.config
        return (cfg.image_size // cfg.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] -> features [B, P, D] (P = patches, or patches+1 with 'cls_patch')."""
        vm = self.vision_tower.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values.to(self.dtype)))  # [B, 1+P, D]
        # Only the layers up to the selected one run: hidden_states[-2] needs 23 of CLIP-L's 24 layers.
        for layer in vm.encoder.layers[: self.layers_to_run]:
            x = layer(x, None)
        return x[:, 1:] if self.select_feature == "patch" else x  # [B, P, D]
