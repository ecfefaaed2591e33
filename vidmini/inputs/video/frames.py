"""What decoders hand on: model-ready frames (HxW RGB uint8, display rotation applied) and what went wrong.

The frame size and the way a decoded picture becomes a model frame are the model's (FrameGeometry), chosen per
video from its display size (FrameModel.geometry_for): LLaVA-Mini squashes to 336x336 as its reference does;
LLaVA-NeXT-Video's processor resizes the shortest edge and crops the centre; LLaVA-OneVision's squashes to
384x384 (all three nearest-neighbour, as vidmini always did). Qwen2.5-VL's processor keeps the aspect ratio
(an HxW frame per video) and resizes bicubic with antialiasing; that resize runs here too, frame by frame from the
full-resolution picture, so only model-sized frames ever leave the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 336


NEAREST = "nearest"  # squash (or centre-crop) by nearest neighbour: the LLaVA families
BICUBIC = "bicubic"  # bicubic with antialiasing, the whole picture (torchvision's resize, as Qwen's processor)


@dataclass(frozen=True)
class FrameGeometry:
    """How a decoded picture becomes a model frame of `size` (height) x `width`: squashed by nearest neighbour
    (crop None), the centre square of side `crop` x the shortest edge squashed (a shortest-edge resize then a centre
    crop, as CLIP's processor does), or resized bicubic with antialiasing (`resize` BICUBIC). FrameGeometry(S) and
    FrameGeometry(S, crop) are the LLaVA families' squares."""

    size: int = SIZE  # the frame's height
    crop: float | None = None  # crop size / shortest-edge size of the processor; None = the whole picture
    width: int | None = None  # None: a square (width = size)
    resize: str = NEAREST

    def __post_init__(self):
        if self.width is None:
            object.__setattr__(self, "width", self.size)

    @property
    def height(self) -> int:
        return self.size

    def key(self) -> str:
        """Part of the frame cache's key: frames of another geometry are other frames. The nearest-neighbour
        squares keep the key they always had ("336", "336c0.875"), so existing cache entries stay valid."""
        if self.resize == NEAREST and self.size == self.width:
            return str(self.height) if self.crop is None else f"{self.height}c{self.crop:g}"
        crop = "" if self.crop is None else f"c{self.crop:g}"
        return f"{self.height}x{self.width}{crop}{'' if self.resize == NEAREST else self.resize[0]}"

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 3

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3


@dataclass
class FrameBatch:
    frames: np.ndarray  # [B, H, W, 3] uint8
    times_s: np.ndarray  # [B] seconds from the start of the video (the sampled time, or the frame's own time)
    positions: np.ndarray  # [B] index into the sampling plan


@dataclass
class DecodeReport:
    decoder: str = ""
    bad_packets: int = 0  # packets FFmpeg refused (corrupt data), skipped
    missing: int = 0  # sampled frames that no decodable frame could fill (truncated or broken file)
    first_missing_s: float | None = None
    fallbacks: list[str] = field(default_factory=list)  # "decord -> pyav at frame N: why" (auto only)

    def warnings(self) -> list[str]:
        out = []
        if self.bad_packets:
            out.append(f"skipped {self.bad_packets} corrupt packet(s)")
        if self.missing:
            out.append(f"{self.missing} sampled frame(s) from {self.first_missing_s:.1f} s on could not be decoded "
                       "(truncated or broken file); answering over what was decoded")
        out.extend(f"decoder fallback {f}" for f in self.fallbacks)
        return out


def nearest_indices(src: int, dst: int = SIZE) -> np.ndarray:
    """Source index of each output pixel for torch's 'nearest' resize: floor(dst_i * src / dst)."""
    return np.minimum(np.floor(np.arange(dst) * (src / dst)).astype(np.int64), src - 1)


def squash(frame: np.ndarray, size: int = SIZE, width: int | None = None) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, width or size, 3], nearest-neighbour, aspect ratio not kept (as the reference).
    Columns first, then whole rows, with np.take: a C-contiguous result, and about 10x less time than fancy
    indexing (`frame[rows][:, cols]`, which also came back non-contiguous and needed another copy)."""
    columns = np.take(frame, nearest_indices(frame.shape[1], size if width is None else width), axis=1)
    return np.take(columns, nearest_indices(frame.shape[0], size), axis=0)


def centre_square(frame: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square of side `fraction` x the shortest edge (a view, no copy)."""
    h, w = frame.shape[:2]
    side = max(1, min(h, w, round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]


def resize_bicubic(frames, size: tuple[int, int]):
    """[T, 3, H, W] uint8 torch tensor -> [T, 3, h, w] uint8, bicubic with antialiasing: the kernel torchvision's
    resize (and so the Qwen processors') calls, uint8 in and out on the CPU; elsewhere through float32, clamped
    and rounded as it does. Each frame is resized on its own, so one frame at a time gives the same pixels as the
    whole video at once."""
    import torch.nn.functional as F

    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if frames.device.type == "cpu":
        return F.interpolate(frames, size=list(size), mode="bicubic", align_corners=False, antialias=True)
    out = F.interpolate(frames.float(), size=list(size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0, 255).round_().to(frames.dtype)


def model_frame(rgb: np.ndarray, rotation: int, geometry: FrameGeometry = FrameGeometry()) -> np.ndarray:
    """[H, W, 3] stored picture -> [h, w, 3] displayed picture at the geometry: nearest-neighbour (squashed as the
    reference, or the centre square for processors that crop), or bicubic from the full picture."""
    if rotation % 360:
        rgb = np.rot90(rgb, k=(rotation // 90) % 4)  # PyAV's rotation is counter-clockwise degrees
    if geometry.crop is not None:
        rgb = centre_square(rgb, geometry.crop)
    if geometry.resize == BICUBIC:
        import torch

        # torch wants a writable array (Pillow's and decord's are read-only); a copy only when it is not one
        chw = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)[None]  # [1, 3, H, W]
        out = resize_bicubic(chw.contiguous(), (geometry.height, geometry.width))
        return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
    return np.ascontiguousarray(squash(rgb, geometry.height, geometry.width))
