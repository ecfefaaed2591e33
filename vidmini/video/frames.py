"""What decoders hand on: model-ready frames (336x336 RGB uint8, display rotation applied) and what went wrong."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 336


@dataclass
class FrameBatch:
    frames: np.ndarray  # [B, 336, 336, 3] uint8
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
    """[H, W, 3] uint8 -> [size, size, 3], nearest-neighbour, aspect ratio not kept (as the reference)."""
    return frame[nearest_indices(frame.shape[0], size)][:, nearest_indices(frame.shape[1], size)]


def model_frame(rgb: np.ndarray, rotation: int, size: int = SIZE) -> np.ndarray:
    """[H, W, 3] stored picture -> [size, size, 3] displayed picture, squashed nearest-neighbour as the reference."""
    if rotation % 360:
        rgb = np.rot90(rgb, k=(rotation // 90) % 4)  # PyAV's rotation is counter-clockwise degrees
    return np.ascontiguousarray(squash(rgb, size))
