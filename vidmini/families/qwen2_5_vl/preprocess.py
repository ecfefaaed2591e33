"""Qwen2.5-VL's video preprocessing, written once here so vidmini needs no torchvision (docs/qwen2_5_vl.md).

The checkpoint's video processor (transformers' Qwen2VLVideoProcessor, which imports torchvision) does, per video
of T frames [T, H, W, 3] uint8:

1. resize every frame to `smart_resize(H, W)`: both sides multiples of patch * merge (28), the pixel count kept
   within [min_pixels, max_pixels] (`size.shortest_edge` / `size.longest_edge` in the config), the aspect ratio
   kept as closely as it can; bicubic with antialiasing;
2. rescale and normalise in one step: (v - 255 * mean) / (255 * std) in float32;
3. pad T to a multiple of temporal_patch_size (2) by repeating the last frame;
4. cut [T, 3, H, W] into patches of temporal_patch_size x patch x patch, ordered unit by unit, then by 2x2 merge
   block in raster order, then inside the block: [grid_t * grid_h * grid_w, 3 * 2 * 14 * 14], with
   video_grid_thw = (grid_t, grid_h, grid_w) in patches.

tests/test_qwen2_5_vl.py compares each step with the processor where torchvision is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vidmini.inputs.video.frames import resize_bicubic


@dataclass(frozen=True)
class VideoSettings:
    """The video processor's settings that change the pixels (the checkpoint's video_preprocessor_config.json)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_config(cls, config: dict) -> VideoSettings:
        """From the saved processor config: `size` {shortest_edge, longest_edge} (or the older min/max_pixels)."""
        size = config.get("size") or {}
        default = cls()
        return cls(
            patch_size=config.get("patch_size", default.patch_size),
            temporal_patch_size=config.get("temporal_patch_size", default.temporal_patch_size),
            merge_size=config.get("merge_size", default.merge_size),
            min_pixels=config.get("min_pixels") or size.get("shortest_edge") or default.min_pixels,
            max_pixels=config.get("max_pixels") or size.get("longest_edge") or default.max_pixels,
            image_mean=tuple(config.get("image_mean", default.image_mean)),
            image_std=tuple(config.get("image_std", default.image_std)),
            rescale_factor=config.get("rescale_factor", default.rescale_factor),
        )

    @property
    def factor(self) -> int:
        """Frame sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's output size for a (height, width) frame: sides rounded to multiples of `factor`, then scaled
    down (floor) or up (ceil) by one common factor until the area is within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is above 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def normalize_frames(frames: torch.Tensor, settings: VideoSettings) -> torch.Tensor:
    """[T, 3, H, W] uint8 -> float32, the processor's fused rescale + normalise: (v - mean/r) / (std/r)."""
    mean = torch.tensor(settings.image_mean, device=frames.device) * (1.0 / settings.rescale_factor)
    std = torch.tensor(settings.image_std, device=frames.device) * (1.0 / settings.rescale_factor)
    return (frames.to(torch.float32) - mean[:, None, None]) / std[:, None, None]


def patchify(pixels: torch.Tensor, settings: VideoSettings) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[T, C, H, W] float -> (patches [grid_t * grid_h * grid_w, C * tp * p * p], (grid_t, grid_h, grid_w)).

    An odd tail is completed by repeating the last frame, as the processor pads. H and W must be multiples of
    patch * merge. Row order: unit, merge-block row, merge-block column, row and column inside the block; each
    row is (channel, frame in the unit, y, x): what the model's Conv3d patch embedding unfolds."""
    t, c, h, w = pixels.shape
    tp, p, m = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {p * m}")
    if pad := -t % tp:
        pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
        t += pad
    gt, gh, gw = t // tp, h // p, w // p
    x = pixels.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # [gt, block row, block col, row in block, col in block, C, tp, p, p]
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def preprocess(frames: torch.Tensor, settings: VideoSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole processor on one video: [T, H, W, 3] uint8 -> (pixel_values_videos [N, C*tp*p*p] float32,
    video_grid_thw [1, 3] int64), as the model's `forward(pixel_values_videos=..., video_grid_thw=...)` takes."""
    chw = frames.permute(0, 3, 1, 2)
    size = smart_resize(chw.shape[2], chw.shape[3], settings.factor, settings.min_pixels, settings.max_pixels)
    patches, grid = patchify(normalize_frames(resize_bicubic(chw.contiguous(), size), settings), settings)
    return patches, torch.tensor([grid], dtype=torch.int64)
