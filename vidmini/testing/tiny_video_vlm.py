"""Tiny random LLaVA-NeXT-Video and LLaVA-OneVision checkpoints, built from configs in a folder with a processor,
a tokenizer and a chat template next to them, so that `from_pretrained(folder)` and `vidmini ask --model folder`
work offline. Random weights: the answers are noise, the plumbing is real.

    python -m vidmini.testing.tiny_video_vlm DIR --family llava_next_video|llava_onevision
"""

from __future__ import annotations

import argparse
import json
import os

# A chat format with one <video> placeholder before the question, as both families' templates put it.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n"
    "{% elif c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, patch_size=7)
# image size, tokens per frame (native): NeXT-Video 4x4 patches -> 2x2 pool = 4; OneVision 5x5 -> 3x3 = 9
FAMILIES = {"llava_next_video": (28, 4), "llava_onevision": (35, 9)}


def build_tokenizer():
    from vidmini.testing.tiny_checkpoint import build_tokenizer as llama_like

    tok = llama_like()
    tok.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(family: str, tok, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                image_size: int | None = None):
    """Random weights; `text`, `vision` and `image_size` override the tiny sizes (bench/ builds bigger ones)."""
    import torch
    from transformers import LlavaNextVideoConfig, LlavaOnevisionConfig

    from vidmini.families.hf_video.backend import model_class

    size = image_size or FAMILIES[family][0]
    ids = dict(video_token_index=tok.convert_tokens_to_ids("<video>"),
               image_token_index=tok.convert_tokens_to_ids("<image>"))
    text = dict(TEXT, **(text or {}), vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    vision = dict(VISION, **(vision or {}))
    if family == "llava_next_video":
        config = LlavaNextVideoConfig(vision_config=dict(model_type="clip_vision_model", image_size=size, **vision),
                                      text_config=dict(model_type="llama", **text), **ids)
    else:
        config = LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", image_size=size, vision_use_head=False, **vision),
            text_config=dict(model_type="qwen2", **text), **ids)
    torch.manual_seed(seed)
    model = model_class(family)(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def preprocessor_config(family: str, image_size: int | None = None) -> dict:
    """The video preprocessor settings each family's processor saves (at the tiny image size by default)."""
    size = image_size or FAMILIES[family][0]
    if family == "llava_next_video":  # CLIP's steps: shortest edge, then the centre crop; CLIP's mean and std
        return dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_center_crop=True,
                    do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    return dict(size={"height": size, "width": size}, do_resize=True, do_rescale=True, rescale_factor=1 / 255,
                do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def write_checkpoint(folder: str, family: str, seed: int = 0) -> str:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a small file is noise
    tok = build_tokenizer()
    build_model(family, tok, seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    with open(os.path.join(folder, "video_preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(family), f, indent=2)
    with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="llava_next_video")
    args = parser.parse_args()
    print(write_checkpoint(args.folder, args.family))


if __name__ == "__main__":
    main()
