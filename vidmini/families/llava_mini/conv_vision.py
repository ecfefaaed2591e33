"""A small convolutional vision tower: strided 3x3 convolutions, then a few transformer blocks over a square grid.

The demo model's vision encoder (vidmini/demo/config.py). A ViT whose patch embedding is one linear map of a
42-px patch averages a digit's strokes into a few numbers before any layer can learn from them; three stride-2
convolutions keep the strokes, and the transformer blocks then relate the grid cells (a word spans several).
It emits what the CLIP tower emits, patch features [B, N, D] with N a square number, so the compressor and
pre-fusion read it unchanged.

Config keys (LlavaMiniConfig.vision_config, model_type "vidmini_conv_vision"): image_size (the pipeline's frame
size), pool (the frame is average-pooled by this factor first), stem_channels, grid_convs, hidden_size,
intermediate_size,
num_hidden_layers, num_attention_heads, and patch_size = the input pixels one output cell covers, so that
(image_size // patch_size) ** 2 is the number of features, as for CLIP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "vidmini_conv_vision"


class Block(nn.Module):
    """Pre-norm transformer block (attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D/heads]
        x = x + self.proj(attn.transpose(1, 2).reshape(B, N, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def conv_norm_gelu(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    # GroupNorm, not BatchNorm: no running statistics, so a frame's features never depend on its batch or mode,
    # and a from-scratch stem trains several times faster than without a norm
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding), nn.GroupNorm(8, c_out), nn.GELU()]


class ConvVisionTower(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.pool = int(config["pool"])
        channels = [3, *config["stem_channels"]]
        dim = config["hidden_size"]
        stem: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            stem += conv_norm_gelu(c_in, c_out, 3, stride=2, padding=1)
        grid_in = config["image_size"] // self.pool // 2 ** (len(channels) - 1)
        self.grid = config["image_size"] // config["patch_size"]
        if grid_in % self.grid:
            raise ValueError(f"vision_config: a {grid_in}x{grid_in} stem output does not tile a {self.grid} grid")
        # each k x k block of stem cells becomes one cell of the grid the compressor reads
        k = grid_in // self.grid
        stem += conv_norm_gelu(channels[-1], dim, k, stride=k, padding=0)
        # 3x3 convolutions on that grid widen what one cell sees to a whole digit or several letters (127 px of
        # the pooled frame for two of them; the strided part alone sees 31 px), at little cost on a 7x7 grid
        for _ in range(config.get("grid_convs", 2)):
            stem += conv_norm_gelu(dim, dim, 3, stride=1, padding=1)
        self.stem = nn.Sequential(*stem)
        self.positions = nn.Parameter(torch.zeros(self.grid * self.grid, config["hidden_size"]))
        self.layers = nn.ModuleList(
            Block(config["hidden_size"], config["num_attention_heads"], config["intermediate_size"])
            for _ in range(config["num_hidden_layers"])
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] (normalized) -> features [B, G*G, D]."""
        return self.forward_pooled(F.avg_pool2d(pixel_values.to(self.dtype), self.pool))

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, 3, S/pool, S/pool] -> [B, G*G, D]: training feeds frames stored already pooled."""
        x = self._before_last(pooled)  # [B, G*G, D]
        return self.layers[-1](x) if len(self.layers) else x

    def _before_last(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.stem(pooled.to(self.dtype)).flatten(2).transpose(1, 2)  # [B, G*G, D]
        x = x + self.positions
        for layer in self.layers[:-1]:
            x = layer(x)
        return x

    def zip_signals(self, pixel_values: torch.Tensor):
        """VisionZip's signals for `--prefusion-tokens` (vidmini.reduce.prefusion), from the last block, whose output
        the compressor reads: that output, the block's keys averaged over heads, and the attention each cell
        receives (mean over heads and queries: there is no CLS token, as in SigLIP)."""
        from vidmini.reduce.visionzip import LayerSignals, received_attention_scores

        if not len(self.layers):
            raise ValueError("--prefusion-tokens ranks the cells by a transformer block's attention; this tower has none")
        x = self._before_last(F.avg_pool2d(pixel_values.to(self.dtype), self.pool))  # [B, N, D]
        last = self.layers[-1]
        B, N, D = x.shape
        q, k, _ = last.qkv(last.norm1(x)).view(B, N, 3, last.heads, D // last.heads).permute(2, 0, 3, 1, 4)
        scores = received_attention_scores(q, k, (D // last.heads) ** -0.5)  # [B, N]
        return LayerSignals(last(x), k.mean(dim=1), scores, has_cls=False)  # [B, N, D], [B, N, D/heads], [B, N]
