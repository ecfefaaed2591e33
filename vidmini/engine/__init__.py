"""Tokens -> answers: the streaming engine and its token buffer, the capacity rules, prefill / decode over the
rewindable KV cache, and the evidence of which frames an answer drew on (docs/architecture.md)."""
