"""Qwen2.5-VL's M-RoPE positions (time, row, column) for a streamed video, by KV-cache index (docs/qwen2_5_vl.md).

The rule is the model's own `get_rope_index` for one video between two pieces of text (transformers 5.24):

- text before the video, at cache index i: (i, i, i);
- the token at merged-grid (row, col) of unit u, after P prefix tokens: (P + floor(u * interval), P + row, P + col),
  interval = tokens_per_second * temporal_patch_size / fps: the seconds one unit spans, in the model's time steps;
- text after the video continues from P + max(grid rows, grid cols), one position per token.

Here the time of unit u is read from the frames' own presentation times, floor((t_u - t_0) * tokens_per_second),
which is the same number for frames sampled at a steady fps (t_u - t_0 = u * temporal_patch_size / fps) and keeps
time aligned where the decoder lost frames. A token that VisionZip kept keeps its (row, col); a merged contextual
token takes its target's.

One thing follows the installed transformers on purpose, where one might expect otherwise: after the video, text
starts at P + max(rows, cols), not at the largest video position + 1 (the rule of the Qwen2.5-VL release's own
code, transformers 4.49-4.57). For a video longer than max(rows, cols) / interval units the question's time
positions then fall inside the video's. The answer continues the text one by one, as both the model's forward over
prompt + answer and its `generate` (which steps on from the prompt's last position) place it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidmini.families.interface import Positions

# A unit's time step is an exact integer at usual rates (1 fps, 2 fps): this keeps float rounding of the
# presentation times (0.1 + 0.2) from flooring it one below.
_TIME_SLACK = 1e-6


def unit_times(times: torch.Tensor, frames_per_unit: int, tokens_per_second: float) -> torch.Tensor:
    """[units] int64 time positions from the frames' times [units * frames_per_unit] (seconds)."""
    first = times[::frames_per_unit].to(torch.float64)  # [units] each unit's first frame
    return torch.floor((first - first[0]) * tokens_per_second + _TIME_SLACK).to(torch.int64)


@dataclass
class VideoPositions(Positions):
    """[prefix | video tokens | after the video ...] positions for one answered range.

    prefix: tokens before the video; video: [N, 3] int64 (time, row, col) of each video token relative to the
    video's start (time in the model's steps); text_start: the first position after the video, relative to it."""

    prefix: int
    video: torch.Tensor  # [N, 3] int64
    text_start: int

    def ids(self, start: int, count: int, device) -> torch.Tensor:
        """position_ids [3, 1, count] for cache indices start..start+count."""
        index = torch.arange(start, start + count, dtype=torch.int64)  # [count]
        out = index.unsqueeze(0).repeat(3, 1)  # [3, count] text before the video: (i, i, i)
        n = len(self.video)
        in_video = (index >= self.prefix) & (index < self.prefix + n)
        if in_video.any():
            out[:, in_video] = self.prefix + self.video[index[in_video] - self.prefix].T
        after = index >= self.prefix + n
        out[:, after] = index[after] - (self.prefix + n) + self.prefix + self.text_start
        return out.unsqueeze(1).to(device)  # [3, 1, count]


def video_positions(prefix: int, times: torch.Tensor, grid: torch.Tensor, tokens_per_unit: int,
                    frames_per_unit: int, tokens_per_second: float, merged_hw: tuple[int, int]) -> VideoPositions:
    """The positions of a range: `grid` [units * K, 2] each token's (row, col) in the merged grid, `times` the
    range's frame times, `merged_hw` the unit's full merged grid (rows, cols)."""
    units = len(grid) // tokens_per_unit
    t = unit_times(times, frames_per_unit, tokens_per_second)[:units].repeat_interleave(tokens_per_unit)  # [N]
    video = torch.cat([t[:, None], grid.to(torch.int64)], dim=1)  # [N, 3]
    return VideoPositions(prefix, video, max(merged_hw))
