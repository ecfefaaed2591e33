"""Modality pre-fusion (docs/llava-mini.md §1.4): Llama decoder layers over [vision | compressed | prompt text].

The reference runs one prompt per frame, causally over the whole concatenation, with prompt positions that are
"padding" (the -200 placeholder and token id 0) removed as keys and skipped in the position ids. Removed keys
are never attended to, and their own outputs are thrown away (they keep the raw embedding), so dropping them
from the sequence computes the same thing with fewer tokens.

vidmini packs several prompts into one sequence: the tokens the prompts share at the start are computed once,
then each prompt's remaining tokens attend to the vision prefix, the shared tokens and their own earlier tokens
only, at the positions they would have alone. Each prompt's result equals running it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_TOKEN_INDEX = -200


def is_padding(token_id: int) -> bool:
    """The reference's `padding_mask = input_ids <= 0`: the placeholder and token id 0 ("!" in Llama-3)."""
    return token_id <= 0


@dataclass(frozen=True)
class FusionLayout:
    """Where each prompt's kept tokens sit in the packed text section of the pre-fusion sequence."""

    prompts: tuple[tuple[int, ...], ...]  # each prompt's ids, placeholder included
    text_ids: torch.Tensor  # [S_text] ids of the packed text section
    owner: torch.Tensor  # [S_text] -1 = shared by all prompts, else the prompt's index
    local_pos: torch.Tensor  # [S_text] position as seen by its prompt, counted from the end of the vision prefix
    gather: tuple[torch.Tensor, ...]  # per prompt: [K_p] index into the text section, one per kept token
    kept: tuple[torch.Tensor, ...]  # per prompt: [K_p] index into the prompt of each kept token

    @classmethod
    def build(cls, prompts: list[list[int]]) -> "FusionLayout":
        kept = [[j for j, t in enumerate(p) if not is_padding(t)] for p in prompts]
        kept_ids = [[p[j] for j in k] for p, k in zip(prompts, kept)]
        shared = _common_prefix_len(kept_ids) if len(prompts) > 1 else len(kept_ids[0])
        text, owner, local = list(kept_ids[0][:shared]), [-1] * shared, list(range(shared))
        gather = []
        for q, ids in enumerate(kept_ids):
            start = len(text)
            suffix = ids[shared:]
            text += suffix
            owner += [q] * len(suffix)
            local += range(shared, shared + len(suffix))
            gather.append(torch.tensor(list(range(shared)) + list(range(start, start + len(suffix)))))
        return cls(
            prompts=tuple(tuple(p) for p in prompts),
            text_ids=torch.tensor(text, dtype=torch.long),
            owner=torch.tensor(owner, dtype=torch.long),
            local_pos=torch.tensor(local, dtype=torch.long),
            gather=tuple(gather),
            kept=tuple(torch.tensor(k, dtype=torch.long) for k in kept),
        )

    def positions(self, prefix_len: int) -> torch.Tensor:
        """[S] position ids: the vision prefix 0..prefix_len-1, then each text token at its own prompt's position."""
        return torch.cat([torch.arange(prefix_len), prefix_len + self.local_pos])

    def attention_allowed(self, prefix_len: int) -> torch.Tensor:
        """[S, S] bool, True where the query (row) may attend to the key (column)."""
        S = prefix_len + len(self.text_ids)
        allowed = torch.ones(S, S, dtype=torch.bool).tril()  # causal over the whole sequence
        own = self.owner
        same_block = (own[None, :] == -1) | (own[None, :] == own[:, None])  # [S_text, S_text]
        causal_local = self.local_pos[None, :] <= self.local_pos[:, None]
        allowed[prefix_len:, prefix_len:] = same_block & causal_local
        return allowed


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[S, S] bool -> [1, 1, S, S] additive mask that both the sdpa and the eager attention accept."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def run_prefusion(layers, rotary, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, S, H] through the pre-fusion decoder layers; no final norm (the reference has none).
    positions [S] (shared by the batch) or [B, S]."""
    position_ids = positions.to(x.device)
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)  # [1, S]
    cos_sin = rotary(x, position_ids)
    for layer in layers:
        x = layer(x, attention_mask=mask, position_ids=position_ids, position_embeddings=cos_sin)
    return x  # [B, S, H]
