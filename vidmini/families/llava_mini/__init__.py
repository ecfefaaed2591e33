"""LLaVA-Mini (docs/llava-mini.md): the model (llava_mini.py and its parts) and its frame-model adapter (family.py).
Importing this package registers the model with transformers' Auto classes under the checkpoint's `model_type`
(`llava_mini_llama`), so no trust_remote_code is needed."""

from transformers import AutoConfig, AutoModelForCausalLM

from vidmini.families.llava_mini.config import MODEL_TYPE, LlavaMiniConfig
from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM

AutoConfig.register(MODEL_TYPE, LlavaMiniConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMiniConfig, LlavaMiniForCausalLM, exist_ok=True)

__all__ = ["LlavaMiniConfig", "LlavaMiniForCausalLM"]
