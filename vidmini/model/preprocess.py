"""Pixels for CLIP (docs/llava-mini.md §2.1, §5.1): frames squashed nearest-neighbour, images padded or cropped."""

from __future__ import annotations

import numpy as np
import torch

from vidmini.video.frames import SIZE


def normalization_table(mean, std) -> torch.Tensor:
    """[3, 256] float32 lookup: value v of channel c -> (float32(v/255 in float64) - mean_c) / std_c, in float32,
    which is bit-exactly what the reference's processor computes."""
    values = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32)[:, None]
    std = np.asarray(std, dtype=np.float32)[:, None]
    return torch.from_numpy((values[None, :] - mean) / std)


def normalize(frames: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 frames [B, S, S, 3] -> float pixel values [B, 3, S, S] (on the frames' device)."""
    table = table.to(frames.device)
    chw = frames.permute(0, 3, 1, 2).long()  # [B, 3, S, S]
    return torch.stack([table[c][chw[:, c]] for c in range(3)], dim=1)


def process_image(image, aspect: str = "square", mean=None, size: int = SIZE) -> np.ndarray:
    """A PIL image -> [size, size, 3] uint8 through the reference's path: 'pad' pads to a square with the mean
    colour first; then bicubic shortest-edge resize and a centre crop (CLIPImageProcessor's steps)."""
    from PIL import Image

    image = image.convert("RGB")
    if aspect == "pad":
        w, h = image.size
        if w != h:
            side = max(w, h)
            fill = tuple(int(m * 255) for m in mean)
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(image, ((side - w) // 2, (side - h) // 2))
            image = canvas
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (w, h) != (new_w, new_h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    # np.array, not np.asarray: PIL's buffer is read-only, and torch.from_numpy warns on read-only arrays.
    return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
