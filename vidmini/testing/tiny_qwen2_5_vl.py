"""Tiny random Qwen2.5-VL checkpoints in the Hub's layout, so `from_pretrained(folder)` and `vidmini ask --model
folder` run offline: config.json (Qwen2_5_VLConfig: vision_config + text_config), model.safetensors,
generation_config.json, a byte-level BPE tokenizer of Qwen2's class with Qwen's special tokens (vocab.json,
merges.txt, tokenizer.json, tokenizer_config.json), the chat template (chat_template.jinja), and the image and
video processor configs (preprocessor_config.json with min/max_pixels as the Hub's checkpoints have it,
video_preprocessor_config.json as transformers 5 saves it). Random weights: the answers are noise, the plumbing
and the geometry rules are real.

    python -m vidmini.testing.tiny_qwen2_5_vl DIR [--seed S]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Qwen2's special tokens, in the Hub tokenizer's order (after the ordinary vocabulary).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# The Qwen2.5-VL Instruct format: a default system turn, then ChatML turns; a video is
# <|vision_start|><|video_pad|><|vision_end|> where it stands in the user's content (the processor expands the pad).
CHAT_TEMPLATE = (
    "{% set counts = namespace(image=0, video=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set counts.image = counts.image + 1 %}{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set counts.video = counts.video + 1 %}{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VISION = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14, temporal_patch_size=2,
              spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1, 3], tokens_per_second=2,
              hidden_act="silu", in_channels=3)
# head_dim 16: M-RoPE's (time, row, col) sections split its 8 frequencies as the real 128-dim heads split 64 (16:24:24)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
# A frame of at most 112 x 112 pixels: 8 x 8 patches of 14, 4 x 4 = 16 merged tokens per unit of 2 frames.
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def build_tokenizer():
    """A byte-level BPE of Qwen2's tokenizer class, trained on vidmini's test corpus, with Qwen's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from vidmini.testing.tiny_checkpoint import CORPUS

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=380, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(pair) for pair in model["merges"]], eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", unk_token=None, chat_template=CHAT_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tok


def build_model(tok, seed: int = 0, vision: dict | None = None, text: dict | None = None):
    """Random weights drawn per parameter name (vidmini.testing.tiny_checkpoint.randomize), on scales where the
    answer depends on the video."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vidmini.testing.tiny_checkpoint import randomize

    ids = {name: tok.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(TEXT, **(text or {}), vocab_size=len(tok), bos_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id)
    vision = dict(VISION, **(vision or {}))
    vision["out_hidden_size"] = text["hidden_size"]
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    randomize(model, seed)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.pad_token_id
    return model


def processor_configs(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[dict, dict]:
    """(preprocessor_config.json, video_preprocessor_config.json) as a Hub checkpoint and transformers 5 write them."""
    shared = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                  image_mean=MEAN, image_std=STD, patch_size=14, temporal_patch_size=2, merge_size=2,
                  resample=3, processor_class="Qwen2_5_VLProcessor")
    image = dict(shared, image_processor_type="Qwen2VLImageProcessor", min_pixels=min_pixels, max_pixels=max_pixels)
    video = dict(shared, video_processor_type="Qwen2VLVideoProcessor",
                 size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    return image, video


def write_checkpoint(folder: str, seed: int = 0, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> str:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a small file is noise
    tok = build_tokenizer()
    build_model(tok, seed).save_pretrained(folder)
    tok.save_pretrained(folder)  # with the template as chat_template.jinja
    names = ("preprocessor_config.json", "video_preprocessor_config.json")
    for name, content in zip(names, processor_configs(min_pixels, max_pixels)):
        Path(folder, name).write_text(json.dumps(content, indent=2))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write the checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="of the random weights")
    print(write_checkpoint(**vars(parser.parse_args())))


if __name__ == "__main__":
    main()
