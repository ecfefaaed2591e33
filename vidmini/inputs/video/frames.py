"""What decoders hand on: model-ready frames (SxS RGB uint8, display rotation applied) and what went wrong.

S and the way a frame becomes a square are the model's (FrameGeometry): LLaVA-Mini squashes to 336x336 as its
reference does; LLaVA-NeXT-Video's processor resizes the shortest edge and crops the centre; LLaVA-OneVision's
squashes to 384x384. All of it is nearest-neighbour on the CPU, before the frames go to the device as uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 336


@dataclass(frozen=True)
class FrameGeometry:
    """How a decoded picture becomes a model frame: an SxS square, squashed (crop None) or the centre square of
    side `crop` x the shortest edge (a shortest-edge resize then a centre crop, as CLIP's processor does)."""

    size: int = SIZE
    crop: float | None = None  # crop size / shortest-edge size of the processor; None = squash

    def key(self) -> str:
        """Part of the frame cache's key: frames of another geometry are other frames."""
        return str(self.size) if self.crop is None else f"{self.size}c{self.crop:g}"

    @property
    def frame_bytes(self) -> int:
        return self.size * self.size * 3


@dataclass
class FrameBatch:
    frames: np.ndarray  # [B, S, S, 3] uint8
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


def squash(frame: np.ndarray, size: int = SIZE) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3], nearest-neighbour, aspect ratio not kept (as the reference).
    Columns first, then whole rows, with np.take: a C-contiguous result, and about 10x less time than fancy
    indexing (`frame[rows][:, cols]`, which also came back non-contiguous and needed another copy)."""
    columns = np.take(frame, nearest_indices(frame.shape[1], size), axis=1)
    return np.take(columns, nearest_indices(frame.shape[0], size), axis=0)


def centre_square(frame: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square of side `fraction` x the shortest edge (a view, no copy)."""
    h, w = frame.shape[:2]
    side = max(1, min(h, w, round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]


def model_frame(rgb: np.ndarray, rotation: int, geometry: FrameGeometry = FrameGeometry()) -> np.ndarray:
    """[H, W, 3] stored picture -> [S, S, 3] displayed picture, nearest-neighbour (squashed as the reference, or
    the centre square for processors that crop)."""
    if rotation % 360:
        rgb = np.rot90(rgb, k=(rotation // 90) % 4)  # PyAV's rotation is counter-clockwise degrees
    if geometry.crop is not None:
        rgb = centre_square(rgb, geometry.crop)
    return np.ascontiguousarray(squash(rgb, geometry.size))
