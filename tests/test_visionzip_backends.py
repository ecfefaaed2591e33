"""The VisionZip video backends on tiny random LLaVA-NeXT-Video and LLaVA-OneVision models built from configs.

K = the native token count must give exactly the model's own output; forcing the reduced path with a budget of
all native tokens and no contextual ones must too (same layer, same pooling, same order); smaller K must run end
to end through the LLM.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
)

from vidmini.families.hf_video.backend import FrameBudget, VideoBackend

VIDEO, IMAGE = 60, 61
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=64)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, patch_size=7)


def next_video():
    torch.manual_seed(0)
    config = LlavaNextVideoConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=28, **VISION),  # 4x4 -> pooled 2x2
        text_config=dict(model_type="llama", **TEXT), video_token_index=VIDEO, image_token_index=IMAGE,
    )
    return LlavaNextVideoForConditionalGeneration(config).eval()


def onevision():
    torch.manual_seed(1)
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=35, vision_use_head=False, **VISION),
        text_config=dict(model_type="qwen2", **TEXT), video_token_index=VIDEO, image_token_index=IMAGE,
    )
    return LlavaOnevisionForConditionalGeneration(config).eval()


FAMILIES = {"next_video": (next_video, 28, 4, 0), "onevision": (onevision, 35, 9, 1)}  # size, native, trailing


def own_logits(model, pv, prefix, suffix, placeholders):
    ids = torch.tensor([prefix + [VIDEO] * placeholders + suffix])
    with torch.no_grad():
        return model(input_ids=ids, pixel_values_videos=pv[None]).logits[0, -1]


def backend_logits(backend, pv, prefix, suffix):
    frames = backend.encode_frames(pv)  # [T, K, H]
    embeds = torch.cat([backend.embed(prefix), frames.flatten(0, 1), backend.video_end(), backend.embed(suffix)])
    with torch.no_grad():
        return backend.language_forward(inputs_embeds=embeds[None], logits_to_keep=1).logits[0, -1]


@pytest.mark.parametrize("family", FAMILIES)
def test_native_and_forced_full_budget_equal_the_model(family):
    make, size, native, trailing = FAMILIES[family]
    model = make()
    pv = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    prefix, suffix = [1, 5, 7], [9, 11, 13, 2]
    want = own_logits(model, pv, prefix, suffix, 3 * native + trailing)

    backend = VideoBackend(model, tokens_per_frame=native)
    assert backend.budget is None and backend.tokens_per_frame == native
    torch.testing.assert_close(backend_logits(backend, pv, prefix, suffix), want)

    forced = VideoBackend(model, budget=FrameBudget(native, 0))  # the reduced path, keeping everything
    torch.testing.assert_close(forced.encode_frames(pv), backend.encode_frames(pv), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(backend_logits(forced, pv, prefix, suffix), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_fewer_tokens_per_frame_run_through_the_llm(family):
    make, size, native, _ = FAMILIES[family]
    backend = VideoBackend(make(), tokens_per_frame=native - 1)
    assert backend.budget == FrameBudget.split(native - 1) and backend.tokens_per_frame == native - 1
    pv = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    frames = backend.encode_frames(pv)
    assert frames.shape == (2, native - 1, 32)
    assert torch.isfinite(backend_logits(backend, pv, [1, 5], [9, 2])).all()


def test_budget_split_follows_the_paper_ratio():
    assert FrameBudget.split(64) == FrameBudget(54, 10)
    assert FrameBudget.split(1) == FrameBudget(1, 0)
    assert FrameBudget.split(16) == FrameBudget(14, 2)
    with pytest.raises(ValueError):
        FrameBudget.split(0)


def test_prompt_is_split_around_the_single_video_placeholder():
    from vidmini.testing.tiny_checkpoint import build_tokenizer

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<video>"]})
    tok.chat_template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'video' %}"
                         "<video>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")
    model = next_video()
    model.config.video_token_id = tok.convert_tokens_to_ids("<video>")
    prefix, suffix = VideoBackend(model).prompt_ids(tok, "What happens?")
    assert tok.decode(prefix) .endswith("USER: ") and tok.decode(suffix).strip().startswith("What happens?")
    assert tok.decode(suffix).endswith("ASSISTANT:")
