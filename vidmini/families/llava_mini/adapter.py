"""Low-rank adapters (LoRA) on the LLM's attention projections: the demo model's way to teach a frozen LLM long videos.

A config with `llm_adapter = {"rank": r, "alpha": a, "targets": ["q_proj", "v_proj"]}` gives each targeted linear
layer of the LLM (model.layers.*.self_attn.<target>, never pre-fusion's) two more weights, `lora_A` [r, in] and
`lora_B` [out, r], saved beside the layer's own: y = W x + (alpha / r) B A x. B starts at zero, so a fresh adapter
is the identity change and training starts from the frozen LLM exactly.

Inference merges them once after loading (W <- W + (alpha / r) B A, in fp32, then cast to W's dtype): a plain
Llama afterwards, with no extra work per token, and every hook the engine places on the LLM's layers (the
evidence's) sees the layers it expects. The LLM's own weights on disk are never changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptedLinear(nn.Linear):
    """nn.Linear plus an unmerged low-rank update (training); `merge` folds it in and returns a plain nn.Linear."""

    lora_A: nn.Parameter  # [r, in]
    lora_B: nn.Parameter  # [out, r]
    lora_scale: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.lora_scale


def adapter_settings(config) -> dict | None:
    settings = getattr(config, "llm_adapter", None)
    if not settings:
        return None
    if int(settings.get("rank", 0)) < 1 or not settings.get("targets"):
        raise ValueError(f"llm_adapter needs a rank >= 1 and targets (got {settings})")
    return settings


def targets(layers: nn.ModuleList, names: list[str]) -> list[nn.Linear]:
    found = []
    for layer in layers:
        for name in names:
            linear = getattr(layer.self_attn, name, None)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"llm_adapter target {name!r} is not a linear layer of the LLM's attention")
            found.append(linear)
    return found


def attach(layers: nn.ModuleList, config) -> int:
    """Give the targeted layers their adapter weights (B zero, A small); returns how many layers got one."""
    settings = adapter_settings(config)
    if settings is None:
        return 0
    rank, alpha = int(settings["rank"]), float(settings.get("alpha", settings["rank"]))
    found = targets(layers, list(settings["targets"]))
    for linear in found:
        weight = linear.weight
        linear.__class__ = AdaptedLinear
        linear.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, dtype=weight.dtype, device=weight.device))
        nn.init.normal_(linear.lora_A, std=1.0 / linear.in_features**0.5)
        linear.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, dtype=weight.dtype, device=weight.device))
        linear.lora_scale = alpha / rank
    return len(found)


@torch.no_grad()
def merge(layers: nn.ModuleList) -> int:
    """Fold every adapter into its layer's weight; the layers become plain nn.Linear. Returns how many merged."""
    merged = 0
    for layer in layers:
        for name, linear in list(layer.self_attn.named_children()):
            if isinstance(linear, AdaptedLinear):
                update = linear.lora_B.float() @ linear.lora_A.float() * linear.lora_scale  # [out, in]
                linear.weight.copy_((linear.weight.float() + update).to(linear.weight.dtype))
                del linear.lora_A, linear.lora_B
                linear.__class__ = nn.Linear
                merged += 1
    return merged
