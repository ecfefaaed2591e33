"""Loading a LLaVA-Mini checkpoint from a Hub id or a folder, as it is (docs/llava-mini.md §4)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "ICTNLP/llava-mini-llama-3.1-8b"
HUB_KWARGS = ("cache_dir", "local_files_only", "revision", "token", "force_download")
TOWER_PREFIX = "model.vision_tower.vision_tower."


class ModelLoadError(Exception):
    """The model cannot be loaded; the message is one line that says which model, why, and how to fix it."""


def _tower_location(tower: str, checkpoint: str) -> str:
    """`mm_vision_tower` as a folder when it is one (relative paths resolve against the checkpoint folder)."""
    if os.path.isdir(tower):
        return tower
    if os.path.isdir(checkpoint) and os.path.isdir(os.path.join(checkpoint, tower)):
        return os.path.join(checkpoint, tower)
    return tower


def resolve_vision_config(tower: str, checkpoint: str, hub_kwargs: dict) -> tuple[dict, dict | None]:
    """The CLIP tower's config (and its preprocessor config when found) for `mm_vision_tower`."""
    from transformers import CLIPVisionConfig

    from vidmini.model.config import CLIP_L14_336, CLIP_L14_336_CONFIG

    location = _tower_location(tower, checkpoint)
    if location == CLIP_L14_336 and not os.path.isdir(location):
        return dict(CLIP_L14_336_CONFIG, model_type="clip_vision_model"), None
    config = CLIPVisionConfig.from_pretrained(location, **hub_kwargs).to_dict()
    processor = Path(location) / "preprocessor_config.json"
    return config, json.loads(processor.read_text()) if processor.is_file() else None


def prepare_config(name_or_path, config, kwargs: dict):
    from vidmini.model.config import LlavaMiniConfig

    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    if config is None:
        config = LlavaMiniConfig.from_pretrained(name_or_path, **hub)
    if config.vision_config is None:
        config.vision_config, processor = resolve_vision_config(config.mm_vision_tower, str(name_or_path), hub)
        if processor:
            config.image_mean = list(processor.get("image_mean", config.image_mean))
            config.image_std = list(processor.get("image_std", config.image_std))
    return config


def finish_loading(model, name_or_path, info: dict) -> None:
    """Fill the vision tower from `mm_vision_tower` when the checkpoint has no tower keys; refuse other gaps."""
    missing = [k for k in info.get("missing_keys", []) if "rotary_emb" not in k]
    from vidmini.demo.checkpoint import fill_llm_weights

    missing = fill_llm_weights(model, missing)  # the demo model's LLM comes from a package, not the checkpoint
    tower_missing = [k for k in missing if k.startswith(TOWER_PREFIX)]
    others = [k for k in missing if not k.startswith(TOWER_PREFIX)]
    if others:
        raise ModelLoadError(f"checkpoint {name_or_path} lacks {len(others)} weights, e.g. {others[0]}")
    if tower_missing:
        from transformers import CLIPVisionModel

        location = _tower_location(model.config.mm_vision_tower, str(name_or_path))
        tower = CLIPVisionModel.from_pretrained(location, dtype=model.model.vision_tower.dtype)
        model.model.vision_tower.vision_tower.vision_model.load_state_dict(tower.state_dict())
    model.model.compressor.pos_embed.requires_grad_(False)
    model.eval()


@dataclass
class LoadOptions:
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    vision_fp32: bool = False


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for but no CUDA device is available; use --device cpu")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype == "auto":
        # The reference runs fp16 on the GPU; CPU kernels for half precision are slow and partly missing.
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in names:
        raise ModelLoadError(f"unknown --dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return names[dtype]


def locate_checkpoint(model_id: str) -> str:
    """A local folder holding the checkpoint: the path itself, or the Hub snapshot (downloaded when allowed)."""
    if model_id == "demo":
        from vidmini.demo.checkpoint import resolve_demo

        return resolve_demo()
    if os.path.isdir(model_id):
        if not os.path.isfile(os.path.join(model_id, "config.json")):
            raise ModelLoadError(f"model folder {model_id} has no config.json; is it a LLaVA-Mini checkpoint?")
        return model_id
    if os.path.sep in model_id.strip("/").replace("/", "", 1) or model_id.startswith((".", "/")):
        raise ModelLoadError(f"model path {model_id} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return snapshot_download(model_id, allow_patterns=patterns)
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model {model_id} was not found on the Hugging Face Hub; check the id or pass --model PATH")
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise ModelLoadError(
            f"model {model_id} is not in the local cache and {why}; "
            f"run `hf download {model_id}` on a connected machine, or pass --model PATH to a local copy"
        )
    except OSError as err:  # network errors surface as OSError subclasses
        raise ModelLoadError(
            f"model {model_id} could not be downloaded ({type(err).__name__}); "
            f"run `hf download {model_id}` or pass --model PATH to a local copy"
        )


def quantization_config(quantize: str, dtype):
    if quantize == "none":
        return None
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise ModelLoadError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); none is available")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"--quantize {quantize} needs bitsandbytes: pip install 'vidmini[quantize]'")
    # Vision parts and the compressor stay in full precision, as the reference's --load-8bit does.
    keep = ["vision_tower", "compressor", "mm_projector", "lm_head"]
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  llm_int8_skip_modules=keep)
    raise ModelLoadError(f"unknown --quantize {quantize!r}; use none, 8bit or 4bit")


def load_model(options: LoadOptions):
    """(model, tokenizer or None) ready for inference on the chosen device."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from vidmini.model.llava_mini import LlavaMiniForCausalLM

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar; our own progress is on stderr
    hf_logging.set_verbosity_error()

    path = locate_checkpoint(options.model)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    quant = quantization_config(options.quantize, dtype)
    try:
        extra = {"quantization_config": quant, "device_map": {"": device}} if quant else {}
        model = LlavaMiniForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"model {options.model} could not be loaded: {str(err).splitlines()[0]}")
    if not quant:
        model.to(device)
    if options.vision_fp32:
        model.model.vision_tower.to(torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer
