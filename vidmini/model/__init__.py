"""LLaVA-Mini, written from docs/llava-mini.md. Importing this module registers it with transformers' Auto classes
under the checkpoint's `model_type` (`llava_mini_llama`), so no trust_remote_code is needed."""

from transformers import AutoConfig, AutoModelForCausalLM

from vidmini.model.config import MODEL_TYPE, LlavaMiniConfig
from vidmini.model.llava_mini import LlavaMiniForCausalLM

AutoConfig.register(MODEL_TYPE, LlavaMiniConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMiniConfig, LlavaMiniForCausalLM, exist_ok=True)

__all__ = ["LlavaMiniConfig", "LlavaMiniForCausalLM"]
