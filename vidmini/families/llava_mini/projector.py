"""The projector from CLIP width to the LLM width (docs/llava-mini.md §1.2): `mlp{N}x_gelu` or `linear`."""

from __future__ import annotations

import re

from torch import nn


def build_projector(kind: str, vision_dim: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(vision_dim, hidden)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise ValueError(f"unsupported mm_projector_type {kind!r}")
    layers: list[nn.Module] = [nn.Linear(vision_dim, hidden)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]  # exact (erf) GELU, as the reference
    return nn.Sequential(*layers)
