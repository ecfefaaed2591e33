"""Preparing a LLaVA-Mini checkpoint for `from_pretrained` (docs/llava-mini.md §4): the vision tower's config, which
weights the checkpoint holds, and filling the tower from `mm_vision_tower` when the checkpoint has none.

Imported by the model class; imports nothing of the model, so there is no cycle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vidmini.errors import ModelLoadError

HUB_KWARGS = ("cache_dir", "local_files_only", "revision", "token", "force_download")
TOWER_PREFIX = "model.vision_tower.vision_tower."
# Regexes transformers matches against missing keys: the tower when it comes from `mm_vision_tower`, the LLM when
# the config names an `llm_source` (a checkpoint that ships its own parts only; its source, e.g. the demo's,
# puts the LLM's weights beside them in LLM_WEIGHTS_FILE).
TOWER_KEYS_PATTERN = r"^model\.vision_tower\.vision_tower\."
LLM_KEYS_PATTERN = r"^(model\.embed_tokens|model\.layers|model\.norm|lm_head)\."
LLM_WEIGHTS_FILE = "llm.safetensors"


def tower_location(tower: str, checkpoint: str) -> str:
    """`mm_vision_tower` as a folder when it is one (relative paths resolve against the checkpoint folder)."""
    if os.path.isdir(tower):
        return tower
    if os.path.isdir(checkpoint) and os.path.isdir(os.path.join(checkpoint, tower)):
        return os.path.join(checkpoint, tower)
    return tower


def resolve_vision_config(tower: str, checkpoint: str, hub_kwargs: dict) -> tuple[dict, dict | None]:
    """The CLIP tower's config (and its preprocessor config when found) for `mm_vision_tower`."""
    from transformers import CLIPVisionConfig

    from vidmini.families.llava_mini.config import CLIP_L14_336, CLIP_L14_336_CONFIG

    location = tower_location(tower, checkpoint)
    if location == CLIP_L14_336 and not os.path.isdir(location):
        return dict(CLIP_L14_336_CONFIG, model_type="clip_vision_model"), None
    config = CLIPVisionConfig.from_pretrained(location, **hub_kwargs).to_dict()
    processor = Path(location) / "preprocessor_config.json"
    return config, json.loads(processor.read_text()) if processor.is_file() else None


def prepare_config(name_or_path, config, kwargs: dict):
    from vidmini.families.llava_mini.config import LlavaMiniConfig

    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    if config is None:
        config = LlavaMiniConfig.from_pretrained(name_or_path, **hub)
    if config.vision_config is None:
        config.vision_config, processor = resolve_vision_config(config.mm_vision_tower, str(name_or_path), hub)
        if processor:
            config.image_mean = list(processor.get("image_mean", config.image_mean))
            config.image_std = list(processor.get("image_std", config.image_std))
    return config


def weight_names(name_or_path) -> set[str] | None:
    """The tensor names a checkpoint holds, read from the safetensors headers or index only (no weights);
    None when they cannot be known without downloading (a Hub id whose metadata is out of reach)."""
    folder = Path(str(name_or_path))
    if folder.is_dir():
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            return set(json.loads(index.read_text())["weight_map"])
        from safetensors import safe_open

        names: set[str] = set()
        for shard in folder.glob("*.safetensors"):
            with safe_open(str(shard), "pt") as f:
                names.update(f.keys())
        return names
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(str(name_or_path))
    except Exception:  # noqa: BLE001  offline or no metadata: the tower check then happens after loading
        return None
    return set(meta.weight_map)


def tower_in_checkpoint(name_or_path) -> bool:
    names = weight_names(name_or_path)
    # "model.vision_tower.": a CLIP tower's keys or any other tower's (the demo's convolutional one)
    return names is None or any(n.startswith("model.vision_tower.") for n in names)


def expected_missing(name_or_path, config) -> list[str]:
    """Patterns of the weights this checkpoint leaves to another source, filled in by `finish_loading`."""
    patterns = [] if tower_in_checkpoint(name_or_path) else [TOWER_KEYS_PATTERN]
    return patterns + ([LLM_KEYS_PATTERN] if getattr(config, "llm_source", None) else [])


def fill_llm_weights(model, file: Path, missing: list[str]) -> list[str]:
    """Load the LLM's weights from `file` (safetensors, the LLM's own key names) into `model`; the keys of
    `missing` still missing after that."""
    from safetensors.torch import load_file

    state = load_file(str(file))
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ModelLoadError(f"the LLM weights in {file} do not match the model's config (e.g. {unexpected[0]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    model.tie_weights()
    filled = set(state) | ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    return [k for k in missing if k not in filled]


def finish_loading(model, name_or_path, info: dict, tower_expected_missing: bool) -> None:
    """Fill the LLM from its `llm_source` and the vision tower from `mm_vision_tower` when the checkpoint has none;
    refuse any other gap."""
    missing = [k for k in info.get("missing_keys", []) if "rotary_emb" not in k]
    if getattr(model.config, "llm_source", None):
        file = Path(str(name_or_path)) / LLM_WEIGHTS_FILE
        if not file.is_file():
            raise ModelLoadError(f"checkpoint {name_or_path} names an llm_source but has no {LLM_WEIGHTS_FILE}: "
                                 "load it through vidmini's --model (which assembles it), not from_pretrained")
        missing = fill_llm_weights(model, file, missing)
    tower_missing = [k for k in missing if k.startswith(TOWER_PREFIX)]
    others = [k for k in missing if not k.startswith(TOWER_PREFIX)]
    if others:
        raise ModelLoadError(f"checkpoint {name_or_path} lacks {len(others)} weights, e.g. {others[0]}")
    if tower_missing or tower_expected_missing:
        from transformers import CLIPVisionModel

        location = tower_location(model.config.mm_vision_tower, str(name_or_path))
        tower = CLIPVisionModel.from_pretrained(location, dtype=model.model.vision_tower.dtype)
        model.model.vision_tower.vision_tower.vision_model.load_state_dict(tower.state_dict())
    model.model.compressor.pos_embed.requires_grad_(False)
    from vidmini.families.llava_mini import adapter

    adapter.merge(model.model.layers)  # the LLM's adapters (the demo model's), once the LLM's own weights are in
    model.eval()
