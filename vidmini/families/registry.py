"""The one registry of model families and checkpoint sources (docs/families.md).

A family is registered by one line in FAMILIES: the checkpoint's config.json `model_type` -> "module:attribute" of
its vidmini.families.interface.Family instance. The module is imported on first use only, so checking --model
(vidmini.families.checkpoint_files) needs no torch. A checkpoint source (the demo model) is one line in SOURCES.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

# Nothing of vidmini is imported here: every other module may read the registry (the families' interface too).

FAMILIES: dict[str, str] = {
    "llava_mini_llama": "vidmini.families.llava_mini.family:FAMILY",
    "llava_next_video": "vidmini.families.hf_video.backend:FAMILY",
    "llava_onevision": "vidmini.families.hf_video.backend:FAMILY",
    "qwen2_5_vl": "vidmini.families.qwen2_5_vl.family:FAMILY",
}

SOURCES: tuple[str, ...] = (
    "vidmini.demo.source:SOURCE",
)

NAMES: dict[str, str] = {  # in words, for the message that lists what vidmini runs (no import needed)
    "llava_mini_llama": "LLaVA-Mini",
    "llava_next_video": "LLaVA-NeXT-Video",
    "llava_onevision": "LLaVA-OneVision",
    "qwen2_5_vl": "Qwen2.5-VL",
}


def model_types() -> tuple[str, ...]:
    """Every `model_type` vidmini runs."""
    return tuple(FAMILIES)


def _attribute(spec: str):
    module, name = spec.split(":")
    return getattr(import_module(module), name)


@cache
def family(model_type: str):
    """The registered family (vidmini.families.interface.Family) of a `model_type` (KeyError for one vidmini does not run: check_checkpoint refuses
    those first, with a one-line message)."""
    return _attribute(FAMILIES[model_type])


def adapt(model, tokenizer, options=None, prefusion_tokens: int | None = None):
    """A FrameModel for `model` (a loaded model, or a FrameModel already), by its config's model_type: the family
    checks the options that concern it (LoadOptions or None, --prefusion-tokens; Family.adapt) and wraps the model
    when it is not one yet."""
    return family(model.config.model_type).adapt(model, tokenizer, options, prefusion_tokens)


def sources() -> list:
    return [_attribute(spec) for spec in SOURCES]


def source_for(model_id: str):
    """The registered CheckpointSource that answers for `model_id` (e.g. "demo"), or None for a Hub id or plain folder."""
    return next((s for s in sources() if s.claims(model_id)), None)
