"""The compression module: C*C learned queries cross-attend to a frame's CLIP patches (docs/llava-mini.md §1.3).

It works in CLIP space (1024-d), before the projector. Keys carry the C*C sin-cos table bicubically up-sampled
to the patch grid; values carry no position; there is no residual, FFN or output norm.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim]: [sin(p*w) | cos(p*w)] with w_k = 10000^(-k/(dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """[grid*grid, dim] 2-D table; the first half of the channels encodes the w (column) coordinate."""
    coords = np.arange(grid, dtype=np.float64)
    w, h = np.meshgrid(coords, coords)  # meshgrid(w, h): w varies along columns
    return np.concatenate([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], axis=1)


def resize_positions(table: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Bicubic up-sampling (fp32, align_corners=False) of a [C*C, D] table to [num_keys, D] (a square grid)."""
    src, dst = int(math.isqrt(table.shape[0])), int(math.isqrt(num_keys))
    if src == dst:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)  # [1, D, C, C]
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(dst * dst, -1).to(table.dtype)  # [N, D]


class Compressor(nn.Module):
    def __init__(self, grid: int, dim: int = 1024, heads: int = 8):
        super().__init__()
        self.grid = grid
        self.query = nn.Parameter(torch.empty(grid * grid, dim))
        # A fixed table, but stored in the checkpoint (the reference registers it as a frozen Parameter).
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(dim, grid)).float(), requires_grad=False)
        # The reference's nn.MultiheadAttention: same module, so the checkpoint's in_proj/out_proj keys load as is.
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_q = nn.LayerNorm(dim, eps=1e-5)
        self.ln_kv = nn.LayerNorm(dim, eps=1e-5)

    def reset_positions(self) -> None:
        """Rewrite the sin-cos table (weight init wipes it; the checkpoint restores it anyway)."""
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(sincos_2d(self.pos_embed.shape[1], self.grid)))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [B, N, D] (N a square number) -> [B, C*C, D]."""
        B, N, _ = patches.shape
        kv = self.ln_kv(patches)  # [B, N, D]
        keys = kv + resize_positions(self.pos_embed, N).to(kv.dtype)  # [B, N, D]
        query = self.ln_q(self.query) + self.pos_embed  # [C*C, D]
        query = query.to(kv.dtype).unsqueeze(0).expand(B, -1, -1)  # [B, C*C, D]
        return self.attn(query, keys, kv, need_weights=False)[0]  # [B, C*C, D]
