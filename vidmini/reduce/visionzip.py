"""VisionZip (Yang et al., CVPR 2025): keep a few dominant vision tokens and merge the rest into contextual ones.

Written from the paper (docs/visionzip.md); the reference's formulas are the contract, its code is not used.

Everything comes from ONE encoder layer, `layer` (default -2, the penultimate layer LLaVA takes its features from):

- features  X  = that layer's output                                                     [B, N, hidden]
- metric    K̄  = that layer's keys (with bias), averaged over heads                      [B, N, d]
- score     s  = with a CLS token: the CLS row of that layer's attention, summed over heads
                 (softmax over all N keys, then the CLS column dropped);
                 without one (SigLIP): the attention each token receives, mean over heads and queries  [B, N]

The attention is recomputed from the layer's queries and keys: one row for CLIP (O(H*N*d)), all rows in chunks
for SigLIP. The encoder itself runs on whatever attention it was loaded with (SDPA, flash) and stops after the
read layer; no attention weights are requested from it.

Selection and merge (`select_and_merge`), for a budget of D dominant + C contextual tokens:

1. Dominant: the CLS token (always kept, counted in D) plus the D-1 best-scored patches; without CLS the D
   best-scored tokens. Ties go to the lower index. Kept in ascending token index (raster order).
2. Contextual: the R = N - D leftover tokens, in ascending index, get C targets at a uniform stride over that 1-D
   list: step = max(1, R // C), targets = leftovers[0, step, 2*step, ...][:C]. Every other leftover is assigned to
   the target whose metric is most cosine-similar (hard argmax; ties go to the first target). Contextual token j =
   X[target_j] + mean(X[members of j]) -- the target PLUS the mean of its members, as the reference does (a target
   without members stays as it is). At a near-tie (within float rounding) the winner depends on the kernels' rounding,
   in the reference too: see `merge_contextual`.
3. Output: [dominant tokens in ascending index, contextual tokens in target order]   [B, D + C, hidden].

Budget guards (the reference crashes on the last two):

- D + C must be at least 1; with a CLS token D must be at least 1 (the CLS token is part of D).
- D > N: all N tokens are dominant, no contextual tokens.
- C > R (more contextual tokens than leftovers): C becomes R, so every leftover is its own target with no
  members and the output holds all N tokens.
- C = 0: no contextual tokens; the output is the D dominant tokens.
The effective budget is `plan_budget(...)`; when it differs from the request a `BudgetClamped` warning says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidmini.reduce.encoder import EncoderLayout, project_qk, read_layer

# Queries per chunk when every row of the attention is needed (no CLS): bounds the [B, H, chunk, N] block.
_RECEIVED_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of fp32 per chunk


class BudgetClamped(UserWarning):
    """The requested D + C does not fit the encoder's token count; a smaller effective budget was used."""


@dataclass(frozen=True)
class Budget:
    dominant: int  # D, CLS included when the encoder has one
    contextual: int  # C

    @property
    def total(self) -> int:
        return self.dominant + self.contextual


def split_budget(tokens: int, dominant_share: float = 54 / 64) -> tuple[int, int]:
    """K tokens -> (D, C) at the paper's ratio (54:10 at K = 64); at least one dominant token."""
    if tokens < 1:
        raise ValueError(f"a budget of tokens must be >= 1 (got {tokens})")
    d = min(tokens, max(1, round(tokens * dominant_share)))
    return d, tokens - d


def plan_budget(num_tokens: int, dominant: int, contextual: int, has_cls: bool) -> Budget:
    """The budget actually used on an encoder of `num_tokens` tokens (see the module docstring)."""
    if dominant < 0 or contextual < 0:
        raise ValueError(f"dominant and contextual must be >= 0 (got {dominant}, {contextual})")
    if dominant + contextual == 0:
        raise ValueError("dominant + contextual must be at least 1")
    if has_cls and dominant == 0:
        raise ValueError("with a CLS token, dominant counts it and must be at least 1")
    d = min(dominant, num_tokens)
    c = min(contextual, num_tokens - d)
    return Budget(d, c)


# ---- scores ------------------------------------------------------------------------------------------------


def cls_attention_scores(cls_query: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """CLS row of the attention, summed over heads: [B, H, 1, d], [B, H, N, d] -> [B, N].

    The softmax runs over all N keys (CLS->CLS included) in fp32; entry 0 (CLS->CLS) is returned but the
    selection never ranks it, since CLS is always kept.
    """
    logits = torch.einsum("bhqd,bhnd->bhqn", cls_query.float(), keys.float()) * scale  # [B, H, 1, N]
    return logits.softmax(dim=-1).sum(dim=1)[:, 0]  # [B, N]


def received_attention_scores(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean attention each token receives, over heads and queries: [B, H, N, d], [B, H, N, d] -> [B, N].

    Computed in query chunks so the full [B, H, N, N] matrix never exists at once.
    """
    b, h, n, _ = queries.shape
    chunk = max(1, _RECEIVED_CHUNK_ELEMENTS // max(1, b * h * n))
    received = torch.zeros(b, n, dtype=torch.float32, device=queries.device)
    k = keys.float()
    for start in range(0, n, chunk):
        q = queries[:, :, start : start + chunk].float()  # [B, H, c, d]
        probs = (torch.einsum("bhqd,bhnd->bhqn", q, k) * scale).softmax(dim=-1)  # [B, H, c, N]
        received += probs.sum(dim=(1, 2))
    return received / (h * n)


# ---- selection and merge -----------------------------------------------------------------------------------


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, F], idx [B, K] -> [B, K, F]."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def select_dominant(scores: torch.Tensor, count: int, has_cls: bool) -> torch.Tensor:
    """Indices of the `count` dominant tokens, ascending: [B, N] -> [B, count] (int64).

    With a CLS token it is always kept (it takes one of the `count` places). Ties go to the lower index:
    a stable descending sort keeps equal scores in index order, which keeps cached results reproducible.
    """
    ranked = scores.float().clone()  # [B, N]
    if has_cls:
        ranked[:, 0] = float("inf")
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices  # [B, N]
    return order[:, :count].sort(dim=1).values  # [B, count]


def leftover_indices(dominant_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Ascending indices of the tokens not kept as dominant: [B, D] -> [B, N - D]."""
    b = dominant_idx.shape[0]
    keep = torch.zeros(b, num_tokens, dtype=torch.bool, device=dominant_idx.device)
    keep.scatter_(1, dominant_idx, True)
    # Every row has the same count, so the nonzero positions reshape into [B, R] in ascending order.
    return (~keep).nonzero()[:, 1].view(b, num_tokens - dominant_idx.shape[1])


def stride_targets(leftovers: int, count: int) -> torch.Tensor:
    """Positions (within the leftover list) of the `count` merge targets: a uniform, floored stride from 0."""
    step = max(1, leftovers // count)
    return torch.arange(0, leftovers, step)[:count]


def _targets(leftovers: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets' positions [C] in the leftover list and the same as a mask [R]."""
    pos = stride_targets(leftovers, count).to(device)  # [C]
    is_target = torch.zeros(leftovers, dtype=torch.bool, device=device)
    is_target[pos] = True
    return pos, is_target


def target_similarity(metric: torch.Tensor, count: int) -> torch.Tensor:
    """Cosine similarity of each non-target leftover to each of the `count` targets: [B, R, d] -> [B, R - C, C].

    In fp32 (bf16 makes near-ties and zero norms); a zero metric vector has similarity 0 to every target.
    """
    pos, is_target = _targets(metric.shape[1], count, metric.device)
    unit = F.normalize(metric.float(), dim=-1)  # [B, R, d]
    return unit[:, ~is_target] @ unit[:, pos].transpose(1, 2)  # [B, R - C, C]


def merge_assigned(hidden: torch.Tensor, assign: torch.Tensor, count: int) -> torch.Tensor:
    """Contextual token j = target j + mean of the leftovers assigned to it: [B, R, F], [B, R - C] -> [B, count, F].

    `assign` gives, for each non-target leftover in ascending order, the index of its target. The mean runs in fp32;
    the result is cast back.
    """
    pos, is_target = _targets(hidden.shape[1], count, hidden.device)
    one_hot = F.one_hot(assign, count).float().transpose(1, 2)  # [B, C, R - C]
    # A matmul, not scatter_add: same sums on every run and device (CUDA atomics would reorder them).
    sums = one_hot @ hidden[:, ~is_target].float()  # [B, C, F]
    means = sums / one_hot.sum(dim=2, keepdim=True).clamp(min=1)  # [B, C, F]
    return (hidden[:, pos].float() + means).to(hidden.dtype)


def merge_contextual(hidden: torch.Tensor, metric: torch.Tensor, count: int) -> torch.Tensor:
    """Merge R leftover tokens into `count` contextual tokens: [B, R, F], [B, R, d] -> [B, count, F].

    Each leftover joins its most similar target (the first on exact ties). At a near-tie, two targets within float
    rounding of each other (~1e-6 in cosine similarity), which one wins follows the rounding of the encoder's kernels
    (CPU instruction set, GPU, attention implementation), as in the reference; the leftover then moves between two
    contextual tokens and nothing else changes.
    """
    assign = target_similarity(metric, count).argmax(dim=2)  # [B, R - C]
    return merge_assigned(hidden, assign, count)


def select_and_merge(
    hidden: torch.Tensor,
    metric: torch.Tensor,
    scores: torch.Tensor,
    dominant: int,
    contextual: int,
    has_cls: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on one layer's signals.

    hidden [B, N, F] features, metric [B, N, d] head-averaged keys, scores [B, N] (entry 0 ignored with CLS).
    Returns (tokens [B, D' + C', F], dominant_idx [B, D']) with D', C' = `plan_budget(N, dominant, contextual)`.
    """
    n = hidden.shape[1]
    budget = plan_budget(n, dominant, contextual, has_cls)
    if budget != Budget(dominant, contextual):
        warnings.warn(
            f"VisionZip budget {dominant}+{contextual} does not fit {n} tokens; using "
            f"{budget.dominant}+{budget.contextual}",
            BudgetClamped,
            stacklevel=2,
        )
    dom_idx = select_dominant(scores, budget.dominant, has_cls)  # [B, D]
    dominant_tokens = _gather(hidden, dom_idx)  # [B, D, F]
    if budget.contextual == 0:
        return dominant_tokens, dom_idx
    rest = leftover_indices(dom_idx, n)  # [B, R]
    contextual_tokens = merge_contextual(_gather(hidden, rest), _gather(metric, rest), budget.contextual)
    return torch.cat([dominant_tokens, contextual_tokens], dim=1), dom_idx


# ---- on a transformers vision model ------------------------------------------------------------------------


@dataclass
class LayerSignals:
    hidden: torch.Tensor  # [B, N, hidden] output of the read layer
    metric: torch.Tensor  # [B, N, d] keys averaged over heads
    scores: torch.Tensor  # [B, N] fp32
    has_cls: bool


@torch.no_grad()
def layer_signals(vision_model: nn.Module, pixel_values: torch.Tensor, layer: int = -2) -> LayerSignals:
    """Features, merge metric and dominance scores of one encoder layer (see the module docstring)."""
    layout = EncoderLayout.of(vision_model)
    index = layout.layer_index(layer)
    reading = read_layer(layout, pixel_values, index)
    qk = project_qk(layout, index, reading.inputs, cls_only=layout.has_cls)
    if layout.has_cls:
        scores = cls_attention_scores(qk.queries, qk.keys, qk.scale)
    else:
        scores = received_attention_scores(qk.queries, qk.keys, qk.scale)
    return LayerSignals(reading.outputs, qk.keys.mean(dim=1), scores, layout.has_cls)


@torch.no_grad()
def reduce_tokens(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    dominant: int,
    contextual: int,
    layer: int = -2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on a transformers CLIP or SigLIP vision model.

    vision_model: CLIPVisionModel, SiglipVisionModel, or a module holding one under `.vision_model`; any depth.
    pixel_values: [B, 3, H, W] as the model's processor makes them.
    dominant, contextual: D and C. With a CLS token (CLIP) D counts it: 54 + 10 keeps CLS + 53 patches + 10 merged.
    layer: encoder layer to read, Python-indexed into `encoder.layers` (-2 = penultimate = LLaVA's
        `vision_feature_layer=-2`; for negative values this equals indexing `hidden_states`).

    Returns (tokens [B, D + C, hidden], dominant_idx [B, D]): tokens are [dominant in ascending token index,
    contextual in target order], in the layer's output space (no post-layernorm, no projector);
    dominant_idx are indices into the encoder's full token sequence (CLS = 0 when present), ascending.
    D and C are clamped as `plan_budget` says when they do not fit (with a `BudgetClamped` warning).
    """
    signals = layer_signals(vision_model, pixel_values, layer)
    return select_and_merge(
        signals.hidden, signals.metric, signals.scores, dominant, contextual, signals.has_cls
    )
