"""The LLM's KV cache: preallocated once (transformers' StaticCache, written by index), and rewindable, so that
several questions share one prefill of [fused prefix | frame tokens] and each continues from there.

Rewinding uses public Cache methods only (`get_seq_length`, `crop`), and every rewind checks that it took effect,
so a transformers release that changes their meaning fails loudly here instead of answering from a stale cache.
Two readers go below the public API, to StaticCache's per-layer tensors (`kv.layers[i].keys` / `.values`): the
memory report's `allocated_bytes` and the evidence's `keys`; `keys` checks their shape and fails loudly, and
`allocated_bytes` counts only what is there (a changed layout reads as "not measured", never as a wrong figure).
"""

from __future__ import annotations


class CacheRewindError(RuntimeError):
    """The cache could not be rewound: answering would read positions of another question."""


class RewindableCache:
    def __init__(self, config, max_len: int):
        from transformers import StaticCache

        self.max_len = max_len
        self.kv = StaticCache(config=config, max_cache_len=max_len)  # allocated on the first write

    @property
    def length(self) -> int:
        """Positions written so far."""
        return int(self.kv.get_seq_length())

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on; the next write lands at `length`."""
        current = self.length
        if not 0 <= length <= current:
            raise CacheRewindError(f"cannot rewind a cache of {current} positions to {length}")
        if length < current:
            self.kv.crop(length - current)  # a negative count removes that many positions from the end
        if self.length != length:
            raise CacheRewindError(
                f"the KV cache did not rewind to {length} positions (it holds {self.length}): transformers' "
                "Cache.crop no longer does what vidmini relies on; pin the tested transformers version"
            )

    def allocated_bytes(self) -> int:
        """Bytes of the key and value tensors actually allocated (0 before the first write)."""
        total = 0
        for layer in self.kv.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
        return total

    def keys(self, layer: int, length: int):
        """One layer's keys for the first `length` positions, as attention reads them (RoPE applied):
        [kv_heads, length, head_dim]. transformers' StaticCache keeps them per layer in `keys`
        [1, kv_heads, max_len, head_dim]; anything else fails here rather than scoring the wrong tensor."""
        tensor = getattr(self.kv.layers[layer], "keys", None)
        if tensor is None or tensor.dim() != 4 or tensor.shape[0] != 1 or tensor.shape[2] < length:
            raise RuntimeError("the KV cache's keys are not where vidmini reads them (StaticCache.layers[i].keys "
                               "[1, kv_heads, max_len, head_dim]); pin the tested transformers version")
        return tensor[0, :, :length]
