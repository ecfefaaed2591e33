"""The one home of every memory and context rule: what a frame costs, how many frames fit, how big a vision batch
may be, and what a card of a given size would hold. `ask`, `summarize`, the dry run and `--profile-memory` all
call these functions, so the estimate and the run can never disagree.

Everything here is computed from the model's config (no loaded weights needed), in bytes. A LLaVA-Mini config is
accepted as it is; other models (vidmini.backends) describe a frame by a FrameShape: the LLM's config, the tokens
each frame keeps, and the vision work per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidmini.errors import UsageError
from vidmini.memory import GIB, MB, proc_kib_field

CARDS_GB = (24, 48, 80)  # cards are sold in GiB: a "24 GB" RTX 3090 has 24 GiB
USABLE = 0.95  # the CUDA context and fragmentation take the rest
RESERVE_BYTES = 512 * MB  # kept free beside the working set: allocator slack, the sampler's logits
PROMPT_TOKENS_GUESS = 128  # text tokens per question in pre-fusion, for sizing before a prompt is known
MAX_AUTO_BATCH = 64
CPU_BATCH = 8  # CPU kernels gain nothing from bigger batches; memory stays small


@dataclass(frozen=True)
class FrameShape:
    """What one frame costs, from configs alone (LLaVA-Mini's config answers the same questions itself)."""

    text: object  # the LLM's config: layers, KV heads, head_dim, hidden_size, max_position_embeddings
    tokens: int  # tokens per frame in the token buffer and the KV cache (K)
    vision: dict  # the vision tower's hidden_size and intermediate_size
    vision_seq: int  # tokens through the vision tower per frame
    fusion_seq: int = 0  # tokens through a pre-fusion stage per frame (0 = none)


def text_config(config):
    """The LLM's config of a FrameShape or a LLaVA-Mini config."""
    return config.text if isinstance(config, FrameShape) else config


def tokens_per_frame(config) -> int:
    return config.tokens if isinstance(config, FrameShape) else config.compressor_size**2


def llava_mini_shape(config, prefusion_tokens: int | None = None) -> FrameShape:
    """LLaVA-Mini's frame: C*C tokens; CLIP over all patches; pre-fusion over the vision prefix (all patches, or
    the `prefusion_tokens` VisionZip keeps) + the compressed tokens + the prompt."""
    vision = dict(config.vision_config)
    patches = vision_prefix_len(config) - config.compressor_size**2
    kept = patches if prefusion_tokens is None else min(prefusion_tokens, patches)
    return FrameShape(config, config.compressor_size**2, vision, patches,
                      kept + config.compressor_size**2 + PROMPT_TOKENS_GUESS)


def dtype_bytes(dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8


def kv_bytes_per_token(config, dtype) -> int:
    """KV-cache bytes one LLM position costs: keys and values, every layer, the KV heads only (GQA)."""
    config = text_config(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes(dtype)


def buffer_bytes_per_frame(config, dtype) -> int:
    """The token buffer's bytes per frame: its K tokens (C*C for LLaVA-Mini) of the LLM's hidden size."""
    return tokens_per_frame(config) * text_config(config).hidden_size * dtype_bytes(dtype)


def bytes_per_frame(config, dtype) -> int:
    """Device bytes each extra frame costs: its tokens in the buffer plus their KV-cache positions."""
    return buffer_bytes_per_frame(config, dtype) + tokens_per_frame(config) * kv_bytes_per_token(config, dtype)


def vision_prefix_len(config) -> int:
    """Tokens before the prompt in the pre-fusion sequence: CLIP patches (all parts in HD mode) + compressed tokens."""
    vision = config.vision_config
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    ratio = config.resolution_ratio
    parts = ratio * ratio + 1 if ratio > 1 else 1
    return patches * parts + config.compressor_size**2


def working_bytes_per_frame(config, dtype, text_tokens: int = PROMPT_TOKENS_GUESS) -> int:
    """Activation memory one frame needs in vision encode + pre-fusion (an estimate, with 2x headroom): one layer's
    live activations at a time plus the residual stream, CLIP in fp32 at worst."""
    if isinstance(config, FrameShape):
        vision, text, vision_seq, fusion_seq = config.vision, config.text, config.vision_seq, config.fusion_seq
    else:  # LLaVA-Mini as the phase-1 rule had it: CLIP and pre-fusion both sized by the whole prefix + prompt
        vision, text = config.vision_config, config
        vision_seq = fusion_seq = vision_prefix_len(config) + text_tokens
    clip = vision_seq * (4 * vision["hidden_size"] + vision["intermediate_size"]) * 4
    fusion = fusion_seq * (6 * text.hidden_size + 3 * text.intermediate_size) * dtype_bytes(dtype)
    return 2 * (clip + fusion)


def free_bytes(device) -> int:
    """Memory the token buffer and KV cache may take: free device memory on CUDA; on CPU half the available RAM
    (the other half is left to decoding, the OS and everyone else)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_ram() // 2


def available_ram() -> int:
    return proc_kib_field("/proc/meminfo", "MemAvailable") or 8 * GIB


def auto_batch_size(config, dtype, device) -> int:
    """Frames per vision batch: half the free device memory over the per-frame working set, at most 64."""
    import torch

    if torch.device(device).type != "cuda":
        return CPU_BATCH
    return int(max(1, min(MAX_AUTO_BATCH, free_bytes(device) * 0.5 // working_bytes_per_frame(config, dtype))))


def context_frames(config, prompt_tokens: int, max_new_tokens: int) -> int:
    """Frames whose tokens fit in the LLM's context next to the prompt and the answer."""
    context = text_config(config).max_position_embeddings
    return max(0, (context - prompt_tokens - max_new_tokens) // tokens_per_frame(config))


@dataclass(frozen=True)
class Capacity:
    frames: int
    reason: str  # what limits it, in words for the user


def answer_room(config, dtype, free: int, prompt_tokens: int) -> tuple[int, str]:
    """(tokens, what limits them): the longest answer that leaves room for the prompt and one frame, in the LLM's
    context and in `free` bytes of memory for the token buffer and KV cache."""
    context = text_config(config).max_position_embeddings
    by_context = context - prompt_tokens - tokens_per_frame(config)
    by_memory = (free - bytes_per_frame(config, dtype)) // kv_bytes_per_token(config, dtype) - prompt_tokens
    if by_memory < by_context:
        return max(0, int(by_memory)), f"memory for the KV cache: {free / GIB:.1f} GiB free"
    return max(0, by_context), f"the LLM's context of {context} positions, less the prompt and one frame"


def check_answer_room(config, dtype, free: int, prompt_tokens: int, max_new_tokens: int) -> None:
    """Exit 2 when an answer of `max_new_tokens` cannot fit beside the prompt and one frame, naming the largest
    that fits: an option must never be a way to exhaust memory, nor leave no frame to answer from."""
    room, why = answer_room(config, dtype, free, prompt_tokens)
    if max_new_tokens > room:
        raise UsageError(f"--max-new-tokens {max_new_tokens} does not fit ({why}); the largest that fits is {room}")


def frame_capacity(config, dtype, batch_size: int, free: int, prompt_tokens: int, max_new_tokens: int) -> Capacity:
    """How many frames one job may hold: the LLM's context, and the memory left for the buffer + KV cache once
    the working set of a vision batch, a reserve and the answer's KV positions are set aside. At least one
    frame, or exit 2 (check_answer_room)."""
    working = batch_size * working_bytes_per_frame(config, dtype) + RESERVE_BYTES
    check_answer_room(config, dtype, free - working, prompt_tokens, max_new_tokens)
    context = context_frames(config, prompt_tokens, max_new_tokens)
    answer = (prompt_tokens + max_new_tokens) * kv_bytes_per_token(config, dtype)
    memory = max(1, (free - working - answer) // bytes_per_frame(config, dtype))
    if memory < context:
        return Capacity(int(memory), "memory left for the token buffer and KV cache")
    return Capacity(int(context), f"the LLM's context ({text_config(config).max_position_embeddings} positions)")


def batch_beside(config, dtype, batch_size: int, free: int, frames: int, prompt_tokens: int,
                 max_new_tokens: int) -> int:
    """The vision batch, lowered so that `frames` frames and the answer still fit beside its working set: the
    batch gives way to the frames, never the reverse; and never more than there are frames."""
    held = frames * bytes_per_frame(config, dtype) + (prompt_tokens + max_new_tokens) * kv_bytes_per_token(config, dtype)
    room = (free - RESERVE_BYTES - held) // working_bytes_per_frame(config, dtype)
    return int(max(1, min(batch_size, frames, room)))


def expected_peak(weight_bytes: int, frames: int, config, dtype, batch_size: int, max_new_tokens: int) -> int:
    """Peak device bytes of a job: weights, every frame's buffer + KV, one vision batch's working set, the answer's
    KV positions."""
    return (weight_bytes + frames * bytes_per_frame(config, dtype) + batch_size * working_bytes_per_frame(config, dtype)
            + max_new_tokens * kv_bytes_per_token(config, dtype))


def projection(fixed: float, slope: float, config) -> dict:
    """PROJECTION (not measured): the longest video at 1 fps whose frames fit next to the fixed memory, per card."""
    context = context_frames(config, 0, 0)
    out = {"note": "projection from the per-frame slope; frames also capped by the LLM context"}
    for gb in CARDS_GB:
        frames = max(0, int((gb * GIB * USABLE - fixed) // slope)) if slope else 0
        frames = min(frames, context)
        out[f"{gb}GB"] = {"frames": frames, "hours_at_1fps": round(frames / 3600, 2),
                          "limited_by": "context" if frames == context else "memory"}
    return out


def fits_on_cards(peak: int) -> dict[str, bool]:
    return {f"{gb}GB": peak < gb * GIB * USABLE for gb in CARDS_GB}

