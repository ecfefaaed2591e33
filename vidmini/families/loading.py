"""Loading a checkpoint from a Hub id, a folder or a registered source (the demo), as it is; the family that
loads it is the one vidmini.families.registry names for the config's `model_type` (docs/families.md). Loading
sits above the families: it knows none of them."""

from __future__ import annotations

import dataclasses
import json
import os

from vidmini.families.checkpoint_files import check_checkpoint, model_type
from vidmini.errors import ModelLoadError
from vidmini.families import registry
from vidmini.families.interface import LoadOptions

__all__ = ["LoadOptions", "check_before_load", "load_model", "locate_checkpoint", "pick_device", "pick_dtype",
           "resolve_quantize"]


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


QUANTIZE_CHOICES = ("auto", "none", "8bit", "4bit")


def resolve_quantize(options: LoadOptions, folder: str | None = None) -> LoadOptions:
    """`options` with --quantize auto made concrete: on a CPU with AVX2 or AVX512, what the checkpoint's config.json
    declares under `cpu_quantize` (the demo model's "8bit": its answers were measured to hold with int8 weights,
    and decode runs ~1.5x faster); "none" on a GPU, on CPUs without those vector units (there the int8 kernel is
    slower than float32: vidmini.families.int8_cpu) and for every checkpoint that declares nothing. `folder`: one
    holding the config.json, when the caller has it."""
    if options.quantize not in QUANTIZE_CHOICES:
        raise ModelLoadError(f"unknown --quantize {options.quantize!r}; use {', '.join(QUANTIZE_CHOICES)}")
    if options.quantize != "auto":
        return options
    declared = "none"
    if pick_device(options.device) == "cpu":
        with open(os.path.join(folder or config_folder(options.model), "config.json")) as f:
            declared = json.load(f).get("cpu_quantize", "none")
        if declared not in ("none", "8bit"):
            raise ModelLoadError(f"model {options.model} declares cpu_quantize {declared!r}; vidmini knows none, 8bit")
        if declared == "8bit":
            from vidmini.families.int8_cpu import kernel_is_fast

            declared = "8bit" if kernel_is_fast() else "none"
    return dataclasses.replace(options, quantize=declared)


def locate_checkpoint(model_id: str, weights: bool = True) -> str:
    """A local folder holding the checkpoint: the path itself, `demo` (the small model shipped with vidmini), or the
    Hub snapshot (downloaded when allowed). weights=False fetches the configs and tokenizer only (for plans that
    load nothing)."""
    check_checkpoint(model_id)
    source = registry.source_for(model_id)
    if source is not None:
        return source.resolve(model_id)
    if os.path.isdir(model_id):
        if not os.path.isfile(os.path.join(model_id, "config.json")):
            raise ModelLoadError(f"model folder {model_id} has no config.json; is it a model checkpoint?")
        return model_id
    if os.path.sep in model_id.strip("/").replace("/", "", 1) or model_id.startswith((".", "/")):
        raise ModelLoadError(f"model path {model_id} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.model", "*.txt", "*.jinja"] + (["*.safetensors"] if weights else [])
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


def config_folder(model_id: str) -> str:
    """A folder holding the checkpoint's config.json, fetched without weights; a source's own (the demo's), so that
    checking an option does not prepare the demo's LLM."""
    source = registry.source_for(model_id)
    if source is not None:
        return source.config_folder(model_id)
    return model_id if os.path.isdir(model_id) else locate_checkpoint(model_id, weights=False)


def check_before_load(options: LoadOptions, max_new_tokens: int, prefusion_tokens: int | None = None) -> None:
    """What the config decides about the options, before the weights load (exit 2): an answer of
    `max_new_tokens` must fit in the LLM's context and in the memory its KV cache needs
    (capacity.check_answer_room); --tokens-per-frame and --prefusion-tokens must suit the model's family."""
    from vidmini.engine import capacity

    folder = config_folder(options.model)
    options = resolve_quantize(options, folder)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    shape = registry.family(model_type(folder)).frame_shape(folder, options, prefusion_tokens)
    free = capacity.free_bytes(device) - capacity.RESERVE_BYTES
    capacity.check_answer_room(shape, dtype, free, capacity.PROMPT_TOKENS_GUESS, max_new_tokens)


def load_model(options: LoadOptions):
    """(model, tokenizer) ready for inference on the chosen device, loaded by the checkpoint's family: a
    FrameModel, or the family's own model class (vidmini.families.interface.Family.load)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar; our own progress is on stderr
    hf_logging.set_verbosity_error()

    path = locate_checkpoint(options.model)
    options = resolve_quantize(options, path)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    return registry.family(model_type(path)).load(path, options, device, dtype)
