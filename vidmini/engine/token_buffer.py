"""The token buffer: every frame's LLM tokens on the device, preallocated once and written by index, with each
frame's presentation time beside them (where an answer's evidence gets its time)."""

from __future__ import annotations

import torch

from vidmini.families.interface import VideoSpan


class TokenBuffer:
    """[capacity * K, H] on the device, allocated once; units (`frames_per_unit` consecutive frames, one frame for
    most families) are written by index, never concatenated. Beside it, each frame's presentation time (seconds
    from the video's start): a frame's place in the LLM's sequence is its unit's place here, so that is where an
    answer's evidence gets its time; and, for families that give one, each token's place inside its unit (grid)."""

    def __init__(self, capacity: int, tokens_per_frame: int, hidden: int, device, dtype, frames_per_unit: int = 1):
        self.capacity, self.tokens_per_unit, self.frames_per_unit = capacity, tokens_per_frame, frames_per_unit
        self.data = torch.empty(capacity * tokens_per_frame, hidden, device=device, dtype=dtype)  # [U*K, H]
        self.times = torch.zeros(capacity * frames_per_unit, dtype=torch.float64)  # [U*f] seconds, on the CPU
        self.grid: torch.Tensor | None = None  # [U*K, G] int64, allocated on the first unit that has one
        self.count = 0  # units written
        self.padding = 0  # frames repeated to complete the last unit (not the video's)

    @property
    def frame_count(self) -> int:
        """Frames of the video in the buffer."""
        return self.count * self.frames_per_unit - self.padding

    @property
    def frame_capacity(self) -> int:
        """Frames the buffer holds: `capacity` counts units."""
        return self.capacity * self.frames_per_unit

    @property
    def tokens_per_frame(self) -> int:
        """K when a unit is one frame (every family but the multi-frame ones, which read tokens_per_unit)."""
        return self.tokens_per_unit

    def write(self, tokens: torch.Tensor, times=None, grid: torch.Tensor | None = None, frames: int | None = None):
        """tokens [B, K, H] for the next B units; times [B * frames_per_unit] their frames' presentation times;
        grid [B, K, G] each token's place in its unit; frames: how many of the units' frames are real (default
        all)."""
        n, t, f = tokens.shape[0], self.tokens_per_unit, self.frames_per_unit
        if self.count + n > self.capacity:
            raise RuntimeError(f"token buffer full ({self.frame_capacity} frames)")
        self.data[self.count * t : (self.count + n) * t] = tokens.reshape(n * t, -1)
        if times is not None:
            self.times[self.count * f : (self.count + n) * f] = torch.as_tensor(times, dtype=torch.float64)
        if grid is not None:
            if self.grid is None:
                self.grid = torch.zeros(self.capacity * t, grid.shape[-1], dtype=torch.long)
            self.grid[self.count * t : (self.count + n) * t] = grid.reshape(n * t, -1).cpu()
        self.count += n
        self.padding += 0 if frames is None else n * f - frames

    def units(self, start: int = 0, end: int | None = None) -> tuple[int, int]:
        """The units holding frames start..end (an end inside a unit takes the whole unit)."""
        f = self.frames_per_unit
        end = self.frame_count if end is None else min(end, self.frame_count)
        return start // f, min(self.count, -(-end // f))

    def frames(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        lo, hi = self.units(start, end)
        return self.data[lo * self.tokens_per_unit : hi * self.tokens_per_unit]  # [(hi-lo)*K, H]

    def frame_units(self, start: int = 0, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(times [F] float64, unit [F] int64): the video's frames start..end (never the padding), their
        presentation times, and which of the units `units(start, end)` gives each frame is in (0 = the first)."""
        lo, _ = self.units(start, end)
        end = self.frame_count if end is None else min(end, self.frame_count)
        frames = torch.arange(start, end)  # [F]
        return self.times[start:end].clone(), frames // self.frames_per_unit - lo

    def span(self, start: int = 0, end: int | None = None) -> VideoSpan:
        """The units of frames start..end as a family's `positions` reads them."""
        lo, hi = self.units(start, end)
        t, f = self.tokens_per_unit, self.frames_per_unit
        grid = None if self.grid is None else self.grid[lo * t : hi * t]
        return VideoSpan(hi - lo, t, f, self.times[lo * f : hi * f], grid)

    @property
    def bytes_per_frame(self) -> int:
        return self.tokens_per_unit * self.data.shape[1] * self.data.element_size() // self.frames_per_unit
