"""Pixels for CLIP (docs/llava-mini.md §2.1, §5.1): frames squashed nearest-neighbour, images padded or cropped."""

from __future__ import annotations

import numpy as np
import torch

from vidmini.inputs.video.frames import SIZE


def normalization_table(mean, std) -> torch.Tensor:
    """[3, 256] float32: value v of channel c -> (float32(v/255 in float64) - mean_c) / std_c, in float32, which is
    bit-exactly what the reference's processor computes. The definition `normalize` is tested against."""
    values = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32)[:, None]
    std = np.asarray(std, dtype=np.float32)[:, None]
    return torch.from_numpy((values[None, :] - mean) / std)


def pixel_stats(mean, std) -> torch.Tensor:
    """[2, 3] float32: the processor's mean and std per channel, what `normalize` takes."""
    return torch.tensor([list(mean), list(std)], dtype=torch.float32)


class PixelBuffer:
    """float32 storage for `normalize`'s output, kept batch after batch and grown when a batch needs more.
    On the CPU a fresh tensor per batch is fresh memory from the kernel each time (43 MB for 32 frames, above
    malloc's mmap threshold), and its page faults cost 3x the normalization itself."""

    def __init__(self, device):
        self.device, self.storage = device, None

    def take(self, numel: int) -> torch.Tensor:
        if self.storage is None or self.storage.numel() < numel:
            self.storage = torch.empty(numel, dtype=torch.float32, device=self.device)
        return self.storage


def normalize(frames: torch.Tensor, stats: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 frames [B, S, S, 3] -> float pixel values [B, 3, S, S] (on the frames' device).

    float32(v) / 255 is the correctly rounded v/255, the same float32 as the reference's float64 division rounded
    (checked for all 256 values), so this equals `normalization_table` bit for bit at a third of a lookup's cost:
    four passes over float32, in place, instead of int64 indices and gathers.

    The per-channel constants are laid out as one pixel row ([W*3]: mean/std of R, G, B, R, G, B, ...) and the
    pixels as rows of W*3 values, so each pass broadcasts over contiguous memory: the same float32 operation on
    every value as broadcasting [1, 3, 1, 1] over the channels-last view, about 3x faster for those two passes.

    `out`: float32 storage of at least frames.numel() values on the frames' device to write into, for a caller
    that reuses it batch after batch (the result is a view of it)."""
    stats = stats.to(frames.device)
    b, h, w, c = frames.shape
    if out is None:
        pixels = frames.to(torch.float32, memory_format=torch.contiguous_format)  # [B, S, S, 3]
    else:
        pixels = out.view(-1)[: frames.numel()].view(frames.shape).copy_(frames)
    pixels.view(b * h, w * c).div_(255).sub_(stats[0].repeat(w)).div_(stats[1].repeat(w))
    return pixels.permute(0, 3, 1, 2)  # [B, 3, S, S], channels-last in memory


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
