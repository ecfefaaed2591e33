"""Which frames the model sees: computed once from the probe, before any decoding.

Two modes:
- `time` (default): one frame per 1/fps seconds of presentation time, the frame on screen at the middle of each
  interval. Right on variable-frame-rate files, files without a duration, late start times and wrong headers.
- `reference`: the LLaVA-Mini reference exactly (docs/llava-mini.md §2.1): floor(frames / avg_fps) frames, the
  middle index of equal segments with NumPy's banker's rounding. It needs a frame count and a frame rate.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from vidmini.errors import UsageError
from vidmini.inputs.video.probe import VideoError, VideoInfo


@dataclass(frozen=True)
class SamplingPlan:
    mode: str  # "time" or "reference"
    times_s: np.ndarray | None  # [N] target presentation times, seconds from the stream's start (time mode)
    indices: np.ndarray | None  # [N] frame indices in decode order (reference mode); may repeat
    fps: float

    def __len__(self) -> int:
        return len(self.times_s if self.times_s is not None else self.indices)

    def key(self) -> str:
        """Identifies the plan (for caches): same key, same frames."""
        values = self.times_s if self.times_s is not None else self.indices
        digest = hashlib.sha1(np.ascontiguousarray(values).tobytes()).hexdigest()[:12]
        return f"{self.mode}-{self.fps:g}-{len(self)}-{digest}"


def plan_time(info: VideoInfo, fps: float = 1.0, max_frames: int | None = None,
              start: float | None = None, end: float | None = None) -> SamplingPlan:
    if fps <= 0:
        raise VideoError("--fps must be positive")
    lo = max(0.0, start or 0.0)
    hi = min(info.duration_s, end) if end is not None else info.duration_s
    if hi <= lo:  # the probe guarantees a positive duration: only --start/--end can empty the range
        raise UsageError(f"{info.path}: the range {lo:g}-{hi:g} s holds no video (duration {info.duration_s:.2f} s); "
                         "give --start/--end inside it")
    span = hi - lo
    count = max(1, math.floor(span * fps + 1e-3))  # 1 ms slack: container and stream clocks differ slightly
    step = min(1.0 / fps, span / count)  # a video shorter than 1/fps gets its one frame from its middle
    if max_frames is not None and count > max_frames:
        count, step = max_frames, span / max_frames
    times = lo + (np.arange(count) + 0.5) * step  # middle of each interval
    return SamplingPlan("time", times, None, fps)


def segment_indices(total_frames: int, count: int) -> np.ndarray:
    """The middle index of each of `count` equal segments, with NumPy's banker's rounding (get_seq_frames)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    seg = (total_frames - 1) / count
    i = np.arange(count)
    return ((np.round(seg * i) + np.round(seg * (i + 1))) // 2).astype(np.int64)


def reference_indices(total_frames: int, avg_fps: float, max_frames: int | None = None) -> np.ndarray:
    """The reference's frame choice: floor(total / avg_fps) segments (at most `total`, and `max_frames`)."""
    count = min(total_frames, int(total_frames // avg_fps))
    if max_frames is not None:
        count = min(count, max_frames)
    return segment_indices(total_frames, count)


def plan_reference(info: VideoInfo, max_frames: int | None = None) -> SamplingPlan:
    frames = info.frames or (round(info.duration_s * info.fps) if info.fps else None)
    if not frames or not info.fps:
        raise VideoError(f"{info.path}: --sampling reference needs a frame count and a frame rate; use --sampling time")
    indices = reference_indices(frames, info.fps, max_frames)
    if len(indices) == 0:
        raise VideoError(f"{info.path}: shorter than 1 s, the reference sampling gives no frame; use --sampling time")
    return SamplingPlan("reference", None, indices, 1.0)


def make_plan(info: VideoInfo, mode: str = "time", fps: float = 1.0, max_frames: int | None = None,
              start: float | None = None, end: float | None = None) -> SamplingPlan:
    if mode == "time":
        return plan_time(info, fps, max_frames, start, end)
    if mode == "reference":
        if start is not None or end is not None or fps != 1.0:
            raise VideoError("--sampling reference takes no --fps/--start/--end (the reference has none)")
        return plan_reference(info, max_frames)
    raise VideoError(f"unknown sampling mode {mode!r}; use time or reference")
