"""VisionZip before LLaVA-Mini's pre-fusion (`--prefusion-tokens K`): K of CLIP's 576 patch tokens enter pre-fusion.

LLaVA-Mini's per-frame cost is dominated by pre-fusion: 4 decoder layers of the LLM's width over
[576 vision tokens | compressed token | prompt] (~1 TFLOP per frame for the 8B model). Here the compressor still
sees all 576 patches, so the *compressed* token before pre-fusion is exactly the exact path's; only the vision
prefix pre-fusion attends to shrinks to K tokens (D dominant by CLS attention + C contextual merges, the paper's
54:10 split, read from the tower's select layer, the one whose features LLaVA-Mini uses).

What changes: pre-fusion's compressed-token query and the prompt tokens attend to K vision keys instead of 576
(merged tokens carry their members' mean), so the frame token and the fused prompt change. Not proven equal, and
not equal: measured by bench/visionzip.py and tests/test_visionzip_prefusion.py (greedy-token agreement with the
exact path).

Positions: the kept tokens sit at their own raster index (a contextual token at its target's index), in ascending
order, and the compressed and prompt tokens keep the exact path's positions (576.. for CLIP-L/336). So every
relative distance RoPE sees between the tokens that remain is the one the model was trained with; only keys go
missing. K = 576 keeps every token at its place and is the exact path.
"""

from __future__ import annotations

import torch

from vidmini.reduce.visionzip import (
    Budget,
    leftover_indices,
    plan_budget,
    select_and_merge,
    split_budget,
    stride_targets,
)


def kept_positions(dominant_idx: torch.Tensor, num_tokens: int, budget: Budget) -> torch.Tensor:
    """Raster index of each output token of select_and_merge: dominant ones, then each contextual token's target.
    [B, D] -> [B, D + C]."""
    if budget.contextual == 0:
        return dominant_idx
    rest = leftover_indices(dominant_idx, num_tokens)  # [B, R]
    targets = rest[:, stride_targets(rest.shape[1], budget.contextual).to(rest.device)]  # [B, C]
    return torch.cat([dominant_idx, targets], dim=1)


@torch.no_grad()
def encode_frames_reduced(model, pixel_values: torch.Tensor, tokens: int):
    """LLaVA-Mini's encode_frames with K = `tokens` vision tokens kept for pre-fusion.

    pixel_values [T, 3, S, S] -> (vision [T, K, H] in ascending raster order, compressed [T, C*C, H] from all
    patches, positions [T, K] int64 raster indices)."""
    if model.config.resolution_ratio > 1:
        raise ValueError("--prefusion-tokens does not support LLaVA-Mini's HD mode (resolution_ratio > 1)")
    # The tower gives its patch features with the signals that rank them (CLIP: its select layer's CLS attention;
    # the demo's conv tower: the attention its last block's cells receive), any CLS entry already dropped.
    signals = model.model.vision_tower.zip_signals(pixel_values)
    projector_dtype = next(model.model.mm_projector.parameters()).dtype
    feats = signals.hidden.to(projector_dtype)  # [T, P, Dv] the tower's patch features
    compressed = model.model.compressor(feats)  # [T, C*C, Dv]: all P patches, as the exact path
    n = feats.shape[1]
    budget = plan_budget(n, *split_budget(tokens), has_cls=False)
    kept, dominant = select_and_merge(feats, signals.metric, signals.scores, budget.dominant,
                                      budget.contextual, has_cls=False)  # [T, K, Dv], [T, D]
    positions = kept_positions(dominant, n, budget)  # [T, K]
    positions, order = positions.sort(dim=1)  # raster order: causal by sequence = causal by position
    kept = kept.gather(1, order.unsqueeze(-1).expand(-1, -1, kept.shape[-1]))
    return model.model.mm_projector(kept), model.model.mm_projector(compressed), positions
