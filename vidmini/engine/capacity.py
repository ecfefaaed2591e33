"""The one home of every memory and context rule: what a frame costs, how many frames fit, how big a vision batch
may be, and what a card of a given size would hold. `ask`, `summarize`, the dry run and `--profile-memory` all
call these functions, so the estimate and the run can never disagree.

Everything here is computed from the model's config (no loaded weights needed), in bytes. A family describes what
its frames cost by a FrameShape (vidmini.families.interface.FrameModel.shape / Family.frame_shape): the LLM's
config, the tokens each encoded unit keeps, the frames in a unit, and the vision work per unit. Nothing here knows
a family; a bare LLaVA-Mini config is still read as the shape of one token grid per frame (tokens_per_frame).
"""

from __future__ import annotations

from dataclasses import dataclass

from vidmini.errors import UsageError
from vidmini.infra.memory import GIB, MB, proc_kib_field

CARDS_GB = (24, 48, 80)  # cards are sold in GiB: a "24 GB" RTX 3090 has 24 GiB
USABLE = 0.95  # the CUDA context and fragmentation take the rest
RESERVE_BYTES = 512 * MB  # kept free beside the working set: allocator slack, the sampler's logits
PROMPT_TOKENS_GUESS = 128  # text tokens per question in pre-fusion, for sizing before a prompt is known
MAX_AUTO_BATCH = 64
CPU_BATCH = 8  # CPU kernels gain nothing from bigger batches; memory stays small


@dataclass(frozen=True)
class FrameShape:
    """What one encoded unit (`frames_per_unit` consecutive frames; one frame for most families) costs, from
    configs alone."""

    text: object  # the LLM's config: layers, KV heads, head_dim, hidden_size, max_position_embeddings
    tokens: int  # tokens per unit in the token buffer and the KV cache (K)
    vision: dict  # the vision tower's hidden_size and intermediate_size
    vision_seq: int  # tokens through the vision tower per unit
    fusion_seq: int = 0  # tokens through a fusion stage per unit (0 = none)
    frames_per_unit: int = 1
    max_frames: int | None = None  # the most frames the model was trained to read at once (None: what fits)


def text_config(config):
    """The LLM's config of a FrameShape (or of a bare LLaVA-Mini config, which is its own LLM config)."""
    return config.text if isinstance(config, FrameShape) else config


def tokens_per_frame(config) -> int:
    """Tokens per unit: the shape's K; for a bare LLaVA-Mini config its compressor's C*C grid, one unit per frame.
    The one home of that rule: LlavaMiniConfig and the LLaVA-Mini family read it here."""
    return config.tokens if isinstance(config, FrameShape) else config.compressor_size**2


def tokens_per_video_frame(config) -> int | float:
    """LLM tokens one frame leaves: K, or K over the frames of a multi-frame unit (an int when whole)."""
    per = tokens_per_frame(config) / frames_per_unit(config)
    return int(per) if per == int(per) else per


def frames_per_unit(config) -> int:
    return config.frames_per_unit if isinstance(config, FrameShape) else 1


def per_frame(unit_bytes: int, config) -> int:
    """A unit's cost spread over its frames (rounded up, so that a frame never looks cheaper than it is)."""
    return -(-unit_bytes // frames_per_unit(config))


def whole_units(frames: int, config) -> int:
    """`frames` rounded down to whole units (the engine encodes a unit at once)."""
    return frames // frames_per_unit(config) * frames_per_unit(config)


def dtype_bytes(dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8


def kv_bytes_per_token(config, dtype) -> int:
    """KV-cache bytes one LLM position costs: keys and values, every layer, the KV heads only (GQA)."""
    config = text_config(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes(dtype)


def buffer_bytes_per_frame(config, dtype) -> int:
    """The token buffer's bytes per frame: its unit's K tokens of the LLM's hidden size, over the unit's frames."""
    return per_frame(tokens_per_frame(config) * text_config(config).hidden_size * dtype_bytes(dtype), config)


def bytes_per_frame(config, dtype) -> int:
    """Device bytes each extra frame costs: its tokens in the buffer plus their KV-cache positions."""
    kv = per_frame(tokens_per_frame(config) * kv_bytes_per_token(config, dtype), config)
    return buffer_bytes_per_frame(config, dtype) + kv


def working_bytes_per_frame(config: FrameShape, dtype) -> int:
    """Activation memory one frame needs in vision encode + fusion (an estimate, with 2x headroom): one layer's
    live activations at a time plus the residual stream, the vision tower in fp32 at worst."""
    clip = config.vision_seq * (4 * config.vision["hidden_size"] + config.vision["intermediate_size"]) * 4
    fusion = config.fusion_seq * (6 * config.text.hidden_size + 3 * config.text.intermediate_size) * dtype_bytes(dtype)
    return per_frame(2 * (clip + fusion), config)


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


# Positions an answer may take beyond --max-new-tokens: what a model writes before its answer (LLaVA-Mini's prompt
# stops before the role header, "<|start_header_id|>assistant<|end_header_id|>" or ChatML's "<|im_start|>assistant",
# and a line break may follow), which the engine does not count as answer (role_header.tokens_before_answer).
ANSWER_HEADROOM = 8


def answer_positions(max_new_tokens: int) -> int:
    """KV positions held for an answer of `max_new_tokens` tokens."""
    return max_new_tokens + ANSWER_HEADROOM


def trained_frames(config) -> int | None:
    """The most frames the model was trained to read at once, where it declares it (a FrameShape's max_frames, a
    bare config's `max_video_frames`): a small LLM answers from more frames than it ever saw with unrelated text,
    so more would fit but fewer, spread over the whole video, answer better. None: no such limit."""
    if isinstance(config, FrameShape):
        return config.max_frames
    return getattr(config, "max_video_frames", None)


def context_frames(config, prompt_tokens: int, answer_tokens: int) -> int:
    """Frames whose tokens fit in the LLM's context next to the prompt and `answer_tokens` positions, and no more
    than the model was trained to read (trained_frames)."""
    context = text_config(config).max_position_embeddings
    units = max(0, (context - prompt_tokens - answer_tokens) // tokens_per_frame(config))
    fit, trained = units * frames_per_unit(config), trained_frames(config)
    return fit if trained is None else min(fit, whole_units(trained, config))


def limited_by_training(config, frames: int) -> bool:
    """Whether `frames` (= context_frames) is the model's trained limit rather than what its context holds."""
    trained = trained_frames(config)
    return trained is not None and frames == whole_units(trained, config)


def context_reason(config, frames: int) -> str:
    """What limits `frames` (= context_frames), in words for the user."""
    if limited_by_training(config, frames):
        return f"the model's trained length, {trained_frames(config)} frames"
    return f"the LLM's context ({text_config(config).max_position_embeddings} positions)"


@dataclass(frozen=True)
class Capacity:
    frames: int
    reason: str  # what limits it, in words for the user


def answer_room(config, dtype, free: int, prompt_tokens: int) -> tuple[int, str]:
    """(tokens, what limits them): the longest answer that leaves room for the prompt and one frame (one unit),
    in the LLM's context and in `free` bytes of memory for the token buffer and KV cache."""
    context = text_config(config).max_position_embeddings
    by_context = context - prompt_tokens - tokens_per_frame(config) - ANSWER_HEADROOM
    unit = bytes_per_frame(config, dtype) * frames_per_unit(config)
    by_memory = (free - unit) // kv_bytes_per_token(config, dtype) - prompt_tokens - ANSWER_HEADROOM
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
    context = context_frames(config, prompt_tokens, answer_positions(max_new_tokens))
    answer = (prompt_tokens + answer_positions(max_new_tokens)) * kv_bytes_per_token(config, dtype)
    memory = max(frames_per_unit(config), whole_units((free - working - answer) // bytes_per_frame(config, dtype), config))
    if memory < context:
        return Capacity(int(memory), "memory left for the token buffer and KV cache")
    return Capacity(int(context), context_reason(config, context))


def batch_beside(config, dtype, batch_size: int, free: int, frames: int, prompt_tokens: int,
                 max_new_tokens: int) -> int:
    """The vision batch, lowered so that `frames` frames and the answer still fit beside its working set: the
    batch gives way to the frames, never the reverse; and never more than there are frames."""
    held = (frames * bytes_per_frame(config, dtype)
            + (prompt_tokens + answer_positions(max_new_tokens)) * kv_bytes_per_token(config, dtype))
    room = (free - RESERVE_BYTES - held) // working_bytes_per_frame(config, dtype)
    return int(max(1, min(batch_size, frames, room)))


def expected_peak(weight_bytes: int, frames: int, config, dtype, batch_size: int, max_new_tokens: int) -> int:
    """Peak device bytes of a job: weights, every frame's buffer + KV, one vision batch's working set, the answer's
    KV positions."""
    return (weight_bytes + frames * bytes_per_frame(config, dtype) + batch_size * working_bytes_per_frame(config, dtype)
            + answer_positions(max_new_tokens) * kv_bytes_per_token(config, dtype))


def projection(fixed: float, slope: float, config) -> dict:
    """PROJECTION (not measured): the longest video at 1 fps whose frames fit next to the fixed memory, per card."""
    context = context_frames(config, 0, 0)
    trained = limited_by_training(config, context)
    out = {"note": "projection from the per-frame slope; frames also capped by the LLM context"
                   + (" and the frames the model was trained on" if trained else "")}
    for gb in CARDS_GB:
        frames = max(0, int((gb * GIB * USABLE - fixed) // slope)) if slope else 0
        frames = min(frames, context)
        limit = ("trained frames" if trained else "context") if frames == context else "memory"
        out[f"{gb}GB"] = {"frames": frames, "hours_at_1fps": round(frames / 3600, 2), "limited_by": limit}
    return out


def fits_on_cards(peak: int) -> dict[str, bool]:
    return {f"{gb}GB": peak < gb * GIB * USABLE for gb in CARDS_GB}

