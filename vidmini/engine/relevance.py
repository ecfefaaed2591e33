"""Which frames an answer drew on: the attention its positions pay to the frame positions, re-scored from the cache.

While an answer is generated, a forward pre-hook on a few LLM layers keeps the hidden state entering the layer at
the positions that matter: each call's last position (the question's last position produces the first answer
token, each generated token fed back the next one), and the first position after the frames. Which cache index a
call starts at is told by the engine (`at`, through vidmini.engine.generate.positioned), never read from the
layer's arguments: M-RoPE layers get no 1-D position ids. Afterwards their queries (the layer's own norm, q_proj,
then the decoder's own rotary embedding at the family's positions for those cache indices, FrameModel.positions:
1-D, or Qwen2.5-VL's (time, row, column)) are scored against that layer's keys in the KV cache: [heads, a few
queries, positions] per layer, in blocks of queries. Never the [N, N] attention, nothing kept per layer but a few
rows, and the LLM keeps its SDPA.

The baseline position (it has seen the video, not the question) is scored too, for measurement: on the demo
model's needles, subtracting it did not localise better than the answer's own attention (bench/evidence.py).

The hook, the norm, q_proj, head_dim and scaling are transformers' Llama-family decoder layer (Llama, Qwen2,
Mistral, Qwen2.5-VL's text model); the rotation is the attention module's own `apply_rotary_pos_emb`
(vidmini.infra.internals.rotary_function). `check_attention` fails loudly on one that differs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vidmini.families.interface import LinearPositions, Positions
from vidmini.infra.internals import rotary_function

# Which LLM layers the evidence reads, as a share of the depth. Measured on the demo model (30 layers) with
# `bench/evidence.py --all-layers` on 12 needles of 10 min: layers 17-24 alone put the top moment on the needle
# in 75-100 % of them, the first half of the stack and the last layers in 0-50 % (they drift to the video's end).
EVIDENCE_DEPTH = (0.57, 0.83)
QUERY_BLOCK = 16  # queries scored at once: [heads, 16, positions] floats at a time, whatever the answer's length


def evidence_layers(num_layers: int, depth: tuple[float, float] = EVIDENCE_DEPTH) -> list[int]:
    """The layer indices from depth[0] to depth[1] of the stack (at least one)."""
    lo = min(num_layers - 1, int(depth[0] * num_layers))
    hi = max(lo + 1, int(round(depth[1] * num_layers)))
    return list(range(lo, min(hi, num_layers)))


def check_attention(decoder, layers: list[int]) -> None:
    """Fail loudly on an attention this module cannot re-score (another q path, a norm on q, no shared RoPE)."""
    for i in layers:
        attn = decoder.layers[i].self_attn
        missing = [a for a in ("q_proj", "head_dim", "scaling", "num_key_value_groups") if not hasattr(attn, a)]
        if missing or not hasattr(decoder.layers[i], "input_layernorm") or hasattr(attn, "q_norm") \
                or not hasattr(decoder, "rotary_emb"):
            raise RuntimeError(f"--evidence: layer {i} of this LLM ({type(attn).__name__}) is not a Llama-family "
                               "attention (q_proj + RoPE, no q_norm); evidence cannot re-score its queries")
        rotary_function(attn)  # its own rotation, checked before the answer rather than after it


class QueryCapture:
    """The hidden states entering the chosen layers at the query positions and at `baseline_at`, while recording."""

    def __init__(self, decoder, layers: list[int]):
        check_attention(decoder, layers)
        self.decoder, self.layers = decoder, layers
        self.rows: dict[int, dict[int, torch.Tensor]] = {i: {} for i in layers}  # layer -> position -> [H]
        self.baseline_at = -1
        self.start: int | None = None  # the cache index of the running call's first position (`at`)

    def at(self, start: int) -> None:
        """The engine's word, before each LLM call, of the cache index the call's first position lands at."""
        self.start = start

    @contextmanager
    def recording(self, baseline_at: int):
        """baseline_at: the first position after the frames."""
        self.baseline_at, self.start = baseline_at, None
        handles = [self.decoder.layers[i].register_forward_pre_hook(self._hook(i), with_kwargs=True)
                   for i in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: int):
        def keep(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]  # [1, n, H]
            if self.start is None:
                raise RuntimeError("--evidence: an LLM call ran without the engine saying where in the cache it "
                                   "starts (call the model through generate.positioned(..., on_step=capture.at))")
            first, n = self.start, hidden.shape[1]
            # Copies: a view would keep the whole chunk's [n, H] alive. A chunk run again after an out-of-memory
            # back-off lands on the same positions.
            self.rows[layer][first + n - 1] = hidden[0, -1].clone()
            if first <= self.baseline_at < first + n:
                self.rows[layer][self.baseline_at] = hidden[0, self.baseline_at - first].clone()
        return keep

    def clear(self) -> None:
        for i in self.layers:
            self.rows[i] = {}

    def frame_attention(self, cache, first: int, frames: int, per_frame: int, queries_from: int,
                        positions: Positions | None = None) -> torch.Tensor:
        """[2, layers, frames] fp32: per chosen layer, the attention paid to each frame (here: each group of
        `per_frame` tokens from cache index `first`, a frame or a unit of frames: the sum over its tokens),
        averaged over the heads, [0] by the queries (cache indices queries_from .. the cache's end, averaged) and
        [1] by the baseline position. `positions`: the sequence's LLM positions (FrameModel.positions), which the
        queries are rotated at; 1-D (the cache index) by default."""
        total = cache.length
        queries = list(range(queries_from, total))
        positions = positions or LinearPositions()
        device = cache.keys(self.layers[0], total).device
        # [1, n + 1] or [3, 1, n + 1]: the positions' last axis is the tokens', whatever the family's layout
        ids = torch.cat([positions.ids(queries_from, len(queries), device), positions.ids(self.baseline_at, 1, device)],
                        dim=-1)
        return torch.stack([self._layer_attention(i, cache.keys(i, total), first, frames, per_frame, queries, ids)
                            for i in self.layers], dim=1)

    def _layer_attention(self, layer: int, keys: torch.Tensor, first: int, frames: int, per_frame: int,
                         queries: list[int], ids: torch.Tensor) -> torch.Tensor:
        """[2, frames]: the queries' mean attention to each frame, and the baseline position's."""
        missing = [p for p in queries + [self.baseline_at] if p not in self.rows[layer]]
        if missing:
            raise RuntimeError(f"--evidence: no hidden state captured at positions {missing[:3]} of layer {layer}")
        positions = torch.tensor(queries + [self.baseline_at], device=keys.device)  # [n + 1] cache indices
        rows = torch.stack([self.rows[layer][p] for p in positions.tolist()])  # [n + 1, H]
        q = self._queries(layer, rows, ids).float()  # [kv, groups, n + 1, hd]
        keys = keys.float()  # [kv, total, hd]
        scale = self.decoder.layers[layer].self_attn.scaling
        kv, groups, n, _ = q.shape
        per_row = torch.zeros(n, frames, dtype=torch.float32, device=keys.device)
        for lo in range(0, n, QUERY_BLOCK):
            block = q[:, :, lo : lo + QUERY_BLOCK]  # [kv, g, b, hd]
            logits = torch.einsum("kgbd,ktd->kgbt", block, keys) * scale  # [kv, g, b, total]
            future = torch.arange(keys.shape[1], device=keys.device)[None, :] > positions[lo : lo + QUERY_BLOCK, None]
            probs = logits.masked_fill(future, float("-inf")).softmax(-1)  # [kv, g, b, total]
            on_frames = probs[..., first : first + frames * per_frame]  # [kv, g, b, F*K]
            per_row[lo : lo + QUERY_BLOCK] = on_frames.unflatten(-1, (frames, per_frame)).sum(-1).mean((0, 1))
        return torch.stack([per_row[:-1].mean(0), per_row[-1]])  # [2, F]

    def _queries(self, layer: int, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """rows [n, H] (entering the layer) at position ids `ids` ([1, n], or [3, 1, n] for M-RoPE, as the decoder's
        rotary embedding takes them) -> their rotated queries [kv, groups, n, hd]."""
        block = self.decoder.layers[layer]
        attn, n = block.self_attn, rows.shape[0]
        x = block.input_layernorm(rows)  # [n, H]
        q = attn.q_proj(x).view(n, -1, attn.head_dim).transpose(0, 1)[None]  # [1, heads, n, hd]
        cos, sin = self.decoder.rotary_emb(x[None], ids)  # [1, n, hd] each (M-RoPE's sections already laid out)
        if cos.shape != (1, n, attn.head_dim):
            raise RuntimeError(f"--evidence: the decoder's rotary embedding gave cos of shape {tuple(cos.shape)}, not "
                               f"[1, {n}, {attn.head_dim}]; pin the tested transformers version")
        q, _ = rotary_function(attn)(q, q, cos, sin)
        return q[0].view(-1, attn.num_key_value_groups, n, attn.head_dim)  # [kv, groups, n, hd]: head h reads kv h // g
