"""Building the full demo model for training and exporting its own weights (everything but the LLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from vidmini.demo.config import DemoSize, build_demo_config

OURS = ("model.vision_tower.", "model.compressor.", "model.mm_projector.", "model.prefusion_layers.")


def build_model(size: DemoSize = DemoSize()):
    """The LlavaMiniForCausalLM of the demo config: the LLM filled from the GGUF cache, our parts freshly made.
    Pre-fusion starts as the LLM's first layers with their output projections (o_proj, down_proj) zeroed: the
    identity on the residual stream, so the prompt reaches the LLM unchanged at step 0, while the attention and
    MLP inputs already read the LLM's embedding space."""
    from vidmini.demo.checkpoint import fill_llm_weights, llm_config
    from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM

    config = build_demo_config(llm_config(), size)
    model = LlavaMiniForCausalLM(config)
    fill_llm_weights(model, [])
    for i, layer in enumerate(model.model.prefusion_layers):
        layer.load_state_dict({k: v for k, v in model.model.layers[i].state_dict().items() if ".lora_" not in k})
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    model.model.compressor.reset_positions()
    return model


def ours(model) -> dict[str, torch.Tensor]:
    """Everything but the LLM's own weights: our modules, and the LLM's adapters when it has them."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(OURS) or ".lora_" in k}


def export(model, out: Path) -> Path:
    """config.json + generation_config.json + model.safetensors (ours only, fp16): the shipped folder."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in ours(model).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    config.save_pretrained(str(out))
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=[2], pad_token_id=2).save_pretrained(str(out))
    return out
