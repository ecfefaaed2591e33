"""Qwen2.5-VL's vision tower, unit by unit, and VisionZip after its patch merger (docs/qwen2_5_vl.md).

Encoding units one batch at a time is exact: in transformers' Qwen2_5_VisionTransformerPretrainedModel every
attention is segmented per temporal slice. The full-attention blocks take `cu_seqlens` of grid_h * grid_w per slice
(vision_utils.get_vision_cu_seqlens, `merge_temporal=False`), the window blocks cut windows inside each slice
(get_vision_window_index builds them per t), the 2-D rotary positions repeat per slice, and the patch embedding
(a Conv3d of stride = kernel) and the merger see one unit's patches only. So the tokens of a unit do not depend on
the other units of the call; tests/test_qwen2_5_vl.py measures it against the model's whole-video encode.

VisionZip (`--tokens-per-frame` below native) selects among the merger's output tokens, the ones the LLM reads:
- score of a merged token: the attention its 2x2 patches receive (mean over heads and queries, summed over the 4)
  in the last full-attention block, where every patch of the unit sees every other (the window blocks only rank
  patches inside their window);
- merge metric: that block's keys (rotary applied, as the attention uses them) averaged over heads, then over the 4;
- features: the merger's output. Then reduce.visionzip.select_and_merge with the 54:10 split, per unit.
Each kept token keeps its (row, col) in the merged grid; a contextual token takes its target's.
"""

from __future__ import annotations

import torch
from torch import nn

from vidmini.families.interface import UnitTokens
from vidmini.reduce.visionzip import (leftover_indices, received_attention_scores, select_and_merge, split_budget,
                                      stride_targets)


def merged_grid(rows: int, cols: int, device=None) -> torch.Tensor:
    """[rows * cols, 2] int64: (row, col) of each merged token in the merger's raster order."""
    r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1)


def grid_thw(units: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """video_grid_thw [1, 3] for `units` units of rows x cols patches."""
    return torch.tensor([[units, rows, cols]], dtype=torch.int64, device=device)


class _AttentionInput:
    """Holds the normalised input and rotary tables of one vision attention for the length of one forward."""

    def __init__(self, attention: nn.Module):
        self.attention, self.hidden, self.rotary = attention, None, None

    def __enter__(self):
        def keep(module, args, kwargs):
            self.hidden = args[0] if args else kwargs["hidden_states"]
            self.rotary = kwargs["position_embeddings"]

        self.handle = self.attention.register_forward_pre_hook(keep, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _queries_keys(attention: nn.Module, hidden: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's queries and keys as its attention uses them: [seq, heads, d] each, rotary applied."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq = hidden.shape[0]
    q, k, _ = attention.qkv(hidden).reshape(seq, 3, attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    return apply_rotary_pos_emb_vision(q, k, *rotary)


class UnitEncoder:
    """The vision tower + merger over whole units, optionally reduced to `keep` tokens per unit by VisionZip."""

    def __init__(self, visual: nn.Module, rows: int, cols: int, keep: int | None = None,
                 dominant_share: float = 54 / 64):
        self.visual = visual  # Qwen2_5_VisionTransformerPretrainedModel
        self.rows, self.cols = rows, cols  # patches per unit side (before the 2x2 merge)
        self.merge = visual.spatial_merge_size
        self.native = (rows // self.merge) * (cols // self.merge)
        self.keep = None if keep is None or keep >= self.native else keep
        self.dominant_share = dominant_share

    @property
    def tokens_per_unit(self) -> int:
        return self.native if self.keep is None else self.keep

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor, units: int) -> UnitTokens:
        """patches [units * rows * cols, C*tp*p*p] (preprocess.patchify) -> UnitTokens: tokens [units, K, H] and
        each token's (row, col) in the merged grid [units, K, 2]."""
        grid = grid_thw(units, self.rows, self.cols, patches.device)
        patches = patches.to(self.visual.dtype)
        cells = merged_grid(self.rows // self.merge, self.cols // self.merge, patches.device)  # [K0, 2]
        if self.keep is None:
            tokens = self.visual(patches, grid_thw=grid).pooler_output  # [units * K0, H]
            return UnitTokens(tokens.view(units, self.native, -1), cells.expand(units, -1, -1))
        return self._reduced(patches, grid, units, cells)

    def raster_order(self) -> torch.Tensor:
        """[K0] int64: for each merged token in raster order, its place in the tower's window order (the same in
        every unit: the tower builds its windows per temporal slice)."""
        from transformers.vision_utils import get_vision_window_index

        window = get_vision_window_index(grid_thw(1, self.rows, self.cols), self.merge, self.visual.window_size,
                                         self.visual.patch_size)[0]
        return torch.argsort(window)

    def _reduced(self, patches, grid, units, cells) -> UnitTokens:
        block = self.visual.blocks[max(self.visual.fullatt_block_indexes)]
        with _AttentionInput(block.attn) as seen:
            tokens = self.visual(patches, grid_thw=grid).pooler_output.view(units, self.native, -1)  # [U, K0, H]
        q, k = _queries_keys(block.attn, seen.hidden, seen.rotary)  # [U*N, h, d], in the tower's window order
        n, m2 = self.rows * self.cols, self.merge**2
        q = q.view(units, n, *q.shape[1:]).transpose(1, 2)  # [U, h, N, d]: full attention is per unit
        k = k.view(units, n, *k.shape[1:]).transpose(1, 2)
        scores = received_attention_scores(q, k, block.attn.scaling)  # [U, N]
        scores = scores.view(units, self.native, m2).sum(-1)  # [U, K0] per merged token
        metric = k.mean(1).view(units, self.native, m2, -1).mean(2)  # [U, K0, d]
        # The tower orders merged tokens by window; its merger output is back in raster order: so are these.
        raster = self.raster_order().to(scores.device)
        scores, metric = scores[:, raster], metric[:, raster]
        dominant, contextual = split_budget(self.keep, self.dominant_share)
        reduced, kept = select_and_merge(tokens, metric, scores, dominant, contextual, has_cls=False)
        where = cells[self._places(kept, contextual)]  # [U, K, 2]
        return UnitTokens(reduced, where)

    def _places(self, dominant: torch.Tensor, contextual: int) -> torch.Tensor:
        """[U, D + C] merged-token index each output token sits at: the dominant ones', then each contextual
        token's target (the position the target had)."""
        if contextual == 0:
            return dominant
        rest = leftover_indices(dominant, self.native)  # [U, R]
        targets = rest[:, stride_targets(rest.shape[1], contextual).to(rest.device)]  # [U, C]
        return torch.cat([dominant, targets], dim=1)
