"""Which frames an answer drew on: the attention its positions pay to the frame positions, re-scored from the cache.

While an answer is generated, a forward hook on the input norm of a few LLM layers keeps, per call, the normalised
hidden state of the last position: the question's last position (it produces the first answer token), then each
generated token fed back (each produces the next). Afterwards their queries (the layer's own q_proj, then RoPE at
their positions) are scored against that layer's keys in the KV cache. That is [heads, a few queries, positions]
per layer, in blocks of queries: never the [N, N] attention, nothing kept per layer, and the LLM keeps its SDPA.

The hook, q_proj, head_dim, scaling and the RoPE function are transformers' Llama-family attention (Llama, Qwen2,
Mistral: LLaVA-Mini and the HF video backends). `check_attention` fails loudly on a model that differs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

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


class QueryCapture:
    """The normalised hidden state of each query position, per chosen layer, while `recording()`."""

    def __init__(self, decoder, layers: list[int]):
        check_attention(decoder, layers)
        self.decoder, self.layers = decoder, layers
        self.rows: dict[int, list[torch.Tensor]] = {i: [] for i in layers}

    @contextmanager
    def recording(self):
        handles = [self.decoder.layers[i].input_layernorm.register_forward_hook(self._hook(i)) for i in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: int):
        def keep(module, args, out):
            # [H]: the last position of this call, the only one that is a query. A copy: a view would keep the
            # whole chunk's [n, H] output alive.
            self.rows[layer].append(out[0, -1].clone())
        return keep

    def prompt_done(self) -> None:
        """After the prefill: of its chunks, only the very last position (the question's last token) is a query."""
        for i in self.layers:
            self.rows[i] = self.rows[i][-1:]

    def clear(self) -> None:
        for i in self.layers:
            self.rows[i] = []

    def frame_attention(self, cache, first: int, frames: int, per_frame: int) -> torch.Tensor:
        """[layers, frames] fp32: per chosen layer, the attention the captured queries pay to each frame (the sum
        over its `per_frame` tokens from position `first`), averaged over the heads and the queries. The queries
        are the last positions in the cache."""
        total = cache.length
        return torch.stack([self._layer_attention(i, cache.keys(i, total), first, frames, per_frame)
                            for i in self.layers])

    def _layer_attention(self, layer: int, keys: torch.Tensor, first: int, frames: int, per_frame: int):
        total = keys.shape[1]
        queries = self._queries(layer, torch.stack(self.rows[layer]), total)  # [kv, groups, n, hd]
        keys = keys.float()  # [kv, total, hd]
        scale = self.decoder.layers[layer].self_attn.scaling
        kv, groups, n, _ = queries.shape
        scores = torch.zeros(frames, dtype=torch.float32, device=keys.device)
        for lo in range(0, n, QUERY_BLOCK):
            q = queries[:, :, lo : lo + QUERY_BLOCK].float()  # [kv, g, b, hd]
            logits = torch.einsum("kgbd,ktd->kgbt", q, keys) * scale  # [kv, g, b, total]
            at = total - n + lo + torch.arange(q.shape[2], device=keys.device)  # [b] the queries' positions
            future = torch.arange(total, device=keys.device)[None, :] > at[:, None]  # [b, total]
            probs = logits.masked_fill(future, float("-inf")).softmax(-1)  # [kv, g, b, total]
            on_frames = probs[..., first : first + frames * per_frame]  # [kv, g, b, F*K]
            scores += on_frames.unflatten(-1, (frames, per_frame)).sum((-1, 0, 1, 2))  # [F]
        return scores / (kv * groups * n)

    def _queries(self, layer: int, rows: torch.Tensor, total: int) -> torch.Tensor:
        """rows [n, H] (normalised) at positions total-n..total-1 -> their RoPE'd queries [kv, groups, n, hd]."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn = self.decoder.layers[layer].self_attn
        n = rows.shape[0]
        q = attn.q_proj(rows).view(n, -1, attn.head_dim).transpose(0, 1)[None]  # [1, heads, n, hd]
        positions = torch.arange(total - n, total, device=rows.device)[None]  # [1, n]
        cos, sin = self.decoder.rotary_emb(rows[None], positions)  # [1, n, hd] each
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        return q[0].view(-1, attn.num_key_value_groups, n, attn.head_dim)  # [kv, groups, n, hd]: head h reads kv h // g
