"""Prefill and decode over a preallocated KV cache, gpt-fast style: small pure functions, last-position logits.

The LLM input is given as a list of pieces ([n_i, H] tensors, e.g. fused prefix | frame tokens | fused suffix)
so that it never has to be concatenated into one long tensor; prefill walks it in chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from vidmini.families.interface import LinearPositions, Positions
from vidmini.engine.kv_cache import RewindableCache

DEFAULT_CHUNK = 2048


class Positioned:
    """A frame model whose LLM reads a sequence's own positions (vidmini.families.interface.Positions, e.g. M-RoPE's
    (time, row, column)): the functions below give each step's cache indices as position_ids, and this turns them
    into the family's. `on_step(start)`, when given, hears each step's first cache index before the LLM runs (the
    evidence's capture, vidmini.engine.relevance). Everything else is the model's."""

    def __init__(self, model, positions: Positions, on_step: Callable[[int], None] | None = None):
        self.model, self.positions, self.on_step = model, positions, on_step

    def language_forward(self, *, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, **kwargs):
        start = int(position_ids[0, 0])  # the step's first cache index (a sync, as the cache's length check is)
        if self.on_step is not None:
            self.on_step(start)
        ids = self.positions.ids(start, inputs_embeds.shape[1], inputs_embeds.device)
        return self.model.language_forward(inputs_embeds=inputs_embeds, position_ids=ids, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def positioned(model, positions: Positions, on_step: Callable[[int], None] | None = None):
    """`model` as prefill and decode should call it for a sequence at `positions` (itself for 1-D positions when
    nobody listens to the steps)."""
    if isinstance(positions, LinearPositions) and on_step is None:
        return model
    return Positioned(model, positions, on_step)


def new_cache(model, max_len: int) -> RewindableCache:
    """A KV cache for `max_len` positions, allocated on the first write (one buffer per layer, written by index)."""
    return RewindableCache(model.config, max_len)


def chunks(pieces: Sequence[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Yield [<=size, H] slices of the concatenation of `pieces` without building it."""
    pending: list[torch.Tensor] = []
    held = 0
    for piece in pieces:
        start = 0
        while start < len(piece):
            take = min(size - held, len(piece) - start)
            pending.append(piece[start : start + take])
            held += take
            start += take
            if held == size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending)
                pending, held = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)


def _llm_step(model, embeds: torch.Tensor, start: int, cache: RewindableCache, last_only: bool) -> torch.Tensor:
    if cache.length != start:
        raise ValueError(f"writing at position {start} into a cache of {cache.length} positions: rewind it first")
    position_ids = torch.arange(start, start + len(embeds), device=embeds.device).unsqueeze(0)  # [1, n]
    out = model.language_forward(
        inputs_embeds=embeds.unsqueeze(0), position_ids=position_ids, cache=cache.kv,
        logits_to_keep=1 if last_only else 0,
    )
    return out.logits[0]  # [1 or n, V]


@torch.no_grad()
def prefill(model, pieces: Sequence[torch.Tensor], cache: RewindableCache, chunk: int = DEFAULT_CHUNK,
            start: int = 0) -> torch.Tensor:
    """Run the input (placed at positions start..) through the LLM; return the next-token logits [V].
    Only the last position of each chunk goes through lm_head: never [N, vocab] logits for a long video."""
    logits = None
    for part in chunks(pieces, chunk):
        logits = _llm_step(model, part, start, cache, last_only=True)
        start += len(part)
    return logits[-1]


@torch.no_grad()
def decode_step(model, token: int, position: int, cache: RewindableCache) -> torch.Tensor:
    """One generated token in, next-token logits [V] out."""
    device = model.get_input_embeddings().weight.device
    embeds = model.get_input_embeddings()(torch.tensor([token], device=device))  # [1, H]
    return _llm_step(model, embeds, position, cache, last_only=True)[-1]


def greedy(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


def make_sampler(temperature: float, top_p: float | None, seed: int | None) -> Callable[[torch.Tensor], int]:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def sample(logits: torch.Tensor) -> int:
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        if top_p is not None and top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs > top_p
            probs[order[outside]] = 0.0
        return int(torch.multinomial(probs, 1, generator=generator))

    return sample


def decode(
    model,
    logits: torch.Tensor,
    length: int,
    cache: RewindableCache,
    max_new_tokens: int,
    eos_ids: set[int],
    pick: Callable[[torch.Tensor], int] = greedy,
    on_token: Callable[[int], None] | None = None,
    step_logits: list[torch.Tensor] | None = None,
    uncounted: Callable[[list[int]], int] | None = None,
) -> list[int]:
    """Token by token from the prefill's logits; `length` = positions already in the cache. `uncounted(tokens)`:
    how many of the tokens so far do not count against max_new_tokens (the role header a model writes before its
    answer), so that the budget is the answer's; the cache must hold that many more."""
    tokens: list[int] = []
    while max_new_tokens > 0:
        if step_logits is not None:
            step_logits.append(logits.float().cpu())
        token = pick(logits)
        if token in eos_ids:
            break
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if len(tokens) - (uncounted(tokens) if uncounted else 0) >= max_new_tokens:
            break
        logits = decode_step(model, token, length + len(tokens) - 1, cache)
    return tokens
