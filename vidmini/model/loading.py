"""Loading a checkpoint from a Hub id or a folder, as it is: LLaVA-Mini (docs/llava-mini.md §4), or one of the
video VLMs transformers ships (vidmini.backends.hf_video), chosen by the config's `model_type`."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vidmini.backends import FAMILIES
from vidmini.checkpoint_files import check_checkpoint, model_type, read_config
from vidmini.errors import ModelLoadError, UsageError

DEFAULT_MODEL = "ICTNLP/llava-mini-llama-3.1-8b"


@dataclass
class LoadOptions:
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    vision_fp32: bool = False
    tokens_per_frame: int | None = None  # other video VLMs: K tokens per frame by VisionZip (None = native)


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


def locate_checkpoint(model_id: str, weights: bool = True) -> str:
    """A local folder holding the checkpoint: the path itself, `demo` (the small model shipped with vidmini), or the
    Hub snapshot (downloaded when allowed). weights=False fetches the configs and tokenizer only (for plans that
    load nothing)."""
    check_checkpoint(model_id)
    if model_id == "demo":
        from vidmini.demo.checkpoint import resolve_demo

        return resolve_demo()
    if os.path.isdir(model_id):
        if not os.path.isfile(os.path.join(model_id, "config.json")):
            raise ModelLoadError(f"model folder {model_id} has no config.json; is it a model checkpoint?")
        if "llm_source" in read_config(model_id) and not glob.glob(os.path.join(model_id, "tokenizer*")):
            from vidmini.demo.checkpoint import resolve_demo  # a demo-layout folder (train/ exports one)

            return resolve_demo(Path(model_id))
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


def config_folder(model_id: str) -> str:
    """A folder holding the checkpoint's config.json, fetched without weights; the demo's own, so that checking
    an option does not prepare the demo's LLM."""
    if model_id == "demo":
        from vidmini.demo.checkpoint import WEIGHTS_DIR

        return str(WEIGHTS_DIR)
    return model_id if os.path.isdir(model_id) else locate_checkpoint(model_id, weights=False)


def check_before_load(options: LoadOptions, max_new_tokens: int, prefusion_tokens: int | None = None) -> None:
    """What the config decides about the options, before the weights load (exit 2): an answer of
    `max_new_tokens` must fit in the LLM's context and in the memory its KV cache needs
    (capacity.check_answer_room); --tokens-per-frame and --prefusion-tokens must suit the model's family."""
    from vidmini import capacity

    folder = config_folder(options.model)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    family = model_type(folder)
    if family in FAMILIES:
        from transformers import AutoConfig

        from vidmini.backends.hf_video import check_tokens_per_frame, native_tokens_per_frame

        config = AutoConfig.from_pretrained(folder)
        check_tokens_per_frame(config, family, options.model, options.tokens_per_frame)
        if prefusion_tokens is not None:
            raise UsageError(f"--prefusion-tokens is for LLaVA-Mini; {options.model} is {family} "
                             "(use --tokens-per-frame)")
        tokens = options.tokens_per_frame or native_tokens_per_frame(config, family)
        shape = capacity.FrameShape(config.text_config, tokens, {}, 0)
    else:
        from vidmini.model.config import LlavaMiniConfig

        shape = LlavaMiniConfig.from_pretrained(folder)
    free = capacity.free_bytes(device) - capacity.RESERVE_BYTES
    capacity.check_answer_room(shape, dtype, free, capacity.PROMPT_TOKENS_GUESS, max_new_tokens)


def load_model(options: LoadOptions):
    """(model, tokenizer) ready for inference on the chosen device: a LlavaMiniForCausalLM, or a
    vidmini.backends.hf_video.VideoBackend for the other video VLMs."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from vidmini.model.llava_mini import LlavaMiniForCausalLM

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar; our own progress is on stderr
    hf_logging.set_verbosity_error()

    path = locate_checkpoint(options.model)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    family = model_type(path)
    if family in FAMILIES:
        return _load_video_vlm(options, path, family, device, dtype)
    if options.tokens_per_frame is not None:
        raise UsageError("--tokens-per-frame is for the other video VLMs (llava_next_video, llava_onevision); "
                         "LLaVA-Mini keeps one token per frame (see --prefusion-tokens)")
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
        raise ModelLoadError(f"model {options.model} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return model, tokenizer


def _load_video_vlm(options: LoadOptions, path: str, family: str, device: str, dtype):
    from vidmini.backends.hf_video import load

    for flag, value in (("--quantize", options.quantize != "none"), ("--vision-fp32", options.vision_fp32)):
        if value:
            raise UsageError(f"{flag} is for LLaVA-Mini checkpoints; {options.model} is {family}")
    return load(path, family, options.model, device, dtype, options.tokens_per_frame)
