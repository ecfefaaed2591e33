"""Random LLaVA-Mini checkpoints, complete with a tokenizer and a Llama-3 style chat template built locally.

    python -m vidmini.testing.tiny_checkpoint OUT_DIR [--size tiny|small|8b] [--compressor-size C] [--seed S]

`tiny` runs every CLI path end to end on a laptop CPU in seconds; `8b` has the released model's real dimensions
(Llama-3.1-8B + CLIP ViT-L/14-336, random weights) for GPU memory and throughput benchmarks.
"""

from __future__ import annotations

import argparse
import zlib
from dataclasses import dataclass

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama-3 Instruct's format, written out: BOS, then a header + content + <|eot_id|> per message.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CORPUS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language. What happens in this "
    "video? Who opens the safe? What colour is the ball? How many people are there? Summarize this part of the "
    "video. Describe the scene, the objects, the counter and the moving square. red green blue yellow white black "
    "one two three four five six seven eight nine ten minute second hour start end first last left right"
)


@dataclass(frozen=True)
class Size:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    prefusion_layers: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    compressor_heads: int
    vocab: int | None  # None: the tokenizer's size


SIZES = {
    "tiny": Size(64, 128, 2, 4, 2, 2, 32, 64, 2, 4, 4, None),
    "small": Size(256, 512, 4, 8, 4, 2, 128, 256, 4, 8, 8, None),
    "8b": Size(4096, 14336, 32, 32, 8, 4, 1024, 4096, 24, 16, 8, 128256),
}


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=395, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer=trainer)
    # Special tokens last, as in Llama-3 (BOS 128000): id 0 is an ordinary token that pre-fusion treats as padding.
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=CHAT_TEMPLATE
    )


def build_config(size: str = "tiny", compressor_size: int = 1, vocab_size: int = 400, patch_size: int = 14,
                 **overrides):
    """patch_size 14 is the released geometry (24x24 patches of 336); a coarser one (48: 7x7) keeps every code path
    and cuts the vision and pre-fusion work ~10x, for end-to-end tests that run thousands of frames."""
    from vidmini.families.llava_mini.config import LlavaMiniConfig

    s = SIZES[size]
    vision = dict(model_type="clip_vision_model", hidden_size=s.vision_hidden, intermediate_size=s.vision_intermediate,
                  num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads, image_size=336,
                  patch_size=patch_size, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
    settings = dict(
        vocab_size=s.vocab or vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=4,
        mm_vision_tower="vision_tower", mm_hidden_size=s.vision_hidden, compressor_dim=s.vision_hidden,
        compressor_heads=s.compressor_heads, compressor_size=compressor_size, prefusion_layer_num=s.prefusion_layers,
        image_aspect_ratio="pad", resolution_ratio=1, tokenizer_model_max_length=4096, vision_config=vision,
    )
    settings.update(overrides)
    return LlavaMiniConfig(**settings)


def randomize(model, seed: int) -> None:
    """Weights drawn per name (seeded by crc32(name)) on scales that make the outputs depend on the input."""
    import torch

    for name, param in model.named_parameters():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        draw = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
        with torch.no_grad():
            if name.endswith("pos_embed"):
                continue
            if "norm" in name or "ln_" in name or "layer_norm" in name or "layrnorm" in name:
                value = torch.rand(param.shape, generator=gen) * 0.8 + 0.6 if name.endswith("weight") else draw(*param.shape) * 0.1
            elif name.endswith("bias"):
                value = draw(*param.shape) * 0.1
            elif "embed_tokens" in name or name.endswith("query") or "class_embedding" in name:
                value = draw(*param.shape)
            elif name.endswith("mm_projector.2.weight") or name == "lm_head.weight":
                value = draw(*param.shape) * 3 / param[0].numel() ** 0.5  # vision on the text scale; logit std ~3
            elif param.dim() >= 2:
                value = draw(*param.shape) / param[0].numel() ** 0.5
            else:
                value = draw(*param.shape) * 0.1
            param.copy_(value.to(param.dtype))


def build_model(size: str = "tiny", compressor_size: int = 1, seed: int = 0, vocab_size: int = 400, dtype=None,
                device: str = "cpu", patch_size: int = 14, **overrides):
    """A random model in memory. The 8b size is materialised straight on `device` in `dtype` (8B parameters in
    fp32 on the host would need 32 GB)."""
    import torch

    from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM

    config = build_config(size, compressor_size, vocab_size, patch_size, **overrides)
    previous = torch.get_default_dtype()
    try:  # built where it will live, so non-persistent buffers (RoPE, CLIP position ids) are computed right
        torch.set_default_dtype(dtype or torch.float32)
        with torch.device(device):
            model = LlavaMiniForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    randomize(model, seed)
    model.model.compressor.reset_positions()
    return model.eval()


def write_checkpoint(out_dir: str, size: str = "tiny", compressor_size: int = 1, seed: int = 0, patch_size: int = 14,
                     **overrides) -> str:
    """A complete checkpoint folder: config, safetensors weights, generation config, tokenizer + chat template."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a 1 MB file is noise
    tokenizer = build_tokenizer()
    model = build_model(size, compressor_size, seed, vocab_size=len(tokenizer), patch_size=patch_size, **overrides)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    eos = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, eot
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=[eot, eos])
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--compressor-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=14, help="CLIP patch (14: the released 24x24 grid)")
    args = parser.parse_args(argv)
    print(write_checkpoint(args.out_dir, args.size, args.compressor_size, args.seed, args.patch_size))


if __name__ == "__main__":
    main()
