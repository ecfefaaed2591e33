"""LLaVA-Mini configuration: a Llama config plus the keys the reference writes (docs/llava-mini.md §4.1)."""

from __future__ import annotations

from transformers import LlamaConfig

from vidmini.engine import capacity

MODEL_TYPE = "llava_mini_llama"  # the released checkpoint's model_type (docs/llava-mini.md §4.1; the registry's key)

# CLIP ViT-L/14-336, the tower the released checkpoint names in `mm_vision_tower`. Known here so that the
# released checkpoint loads with nothing but its own files (its weights hold the tower under
# model.vision_tower.vision_tower.vision_model.*).
CLIP_L14_336 = "openai/clip-vit-large-patch14-336"
CLIP_L14_336_CONFIG = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    num_channels=3,
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LlavaMiniConfig(LlamaConfig):
    """Every LLaVA-Mini key the reference reads, with the reference's defaults.

    `tokenizer_model_max_length` is kept (so configs round-trip) but deliberately *not* applied: the reference
    truncates the merged sequence to it, which silently cuts the question off videos longer than ~67 min at
    1 fps. vidmini bounds the sequence with its token buffer instead (see vidmini/engine/engine.py).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        mm_vision_tower: str = CLIP_L14_336,
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        mm_projector_type: str = "mlp2x_gelu",
        mm_hidden_size: int = 1024,
        mm_patch_merge_type: str = "flat",
        image_aspect_ratio: str = "square",
        resolution_ratio: int = 1,
        compressor_size: int = 2,
        compressor_dim: int = 1024,
        compressor_heads: int = 8,
        prefusion_layer_num: int = 4,
        tokenizer_model_max_length: int | None = None,
        vision_config: dict | None = None,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        **kwargs,
    ):
        self.mm_vision_tower = mm_vision_tower
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        self.mm_projector_type = mm_projector_type
        self.mm_hidden_size = mm_hidden_size
        self.mm_patch_merge_type = mm_patch_merge_type
        self.image_aspect_ratio = image_aspect_ratio
        self.resolution_ratio = resolution_ratio
        # build_compressor's default is 2 when the key is absent; the released model writes 1.
        self.compressor_size = compressor_size
        self.compressor_dim = compressor_dim
        self.compressor_heads = compressor_heads
        self.prefusion_layer_num = prefusion_layer_num
        self.tokenizer_model_max_length = tokenizer_model_max_length
        # The CLIP tower's own config; resolved from `mm_vision_tower` at load time when the checkpoint lacks it.
        self.vision_config = vision_config
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        super().__init__(**kwargs)

    @property
    def tokens_per_frame(self) -> int:
        return capacity.tokens_per_frame(self)


def vision_prefix_len(config) -> int:
    """Tokens before the prompt in the pre-fusion sequence: CLIP patches (all parts in HD mode) + compressed tokens."""
    vision = config.vision_config
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    ratio = config.resolution_ratio
    parts = ratio * ratio + 1 if ratio > 1 else 1
    return patches * parts + capacity.tokens_per_frame(config)
