"""Every torch / transformers internal vidmini relies on, each in one place that fails loudly when a release
changes it (as vidmini.reduce.encoder does for the vision encoders' layout). Nothing else in vidmini touches a
private name of either library. Imports torch / transformers lazily: vidmini/__init__.py uses this module.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys


class InternalsChanged(RuntimeError):
    """A torch or transformers internal is not what vidmini was written against: pin the tested version."""


# ---- the import hook: registering LLaVA-Mini once transformers is imported ---------------------------------------
def register_after_import(module: str, register) -> None:
    """Call `register()` right after `module` is first imported (now, if it already is). Done with a meta-path
    finder that wraps the module's loader; a loader without `exec_module` (not a standard source loader) is
    refused loudly rather than left unregistered."""
    if module in sys.modules:
        register()
        return
    if not any(isinstance(f, _AfterImport) and f.module == module for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(module, register))


class _AfterImport:
    """Finds `module` like the normal finders do, then runs `register` once its code has run."""

    def __init__(self, module: str, register):
        self.module, self.register = module, register

    def find_spec(self, name, path=None, target=None):
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None:
            return None
        run_module = getattr(spec.loader, "exec_module", None)
        if run_module is None:
            raise InternalsChanged(f"{name}'s loader ({type(spec.loader).__name__}) has no exec_module: vidmini cannot "
                                   "register LLaVA-Mini with transformers' Auto classes after the import")

        def exec_then_register(module):
            run_module(module)
            self.register()

        spec.loader.exec_module = exec_then_register
        return spec


# ---- transformers -----------------------------------------------------------------------------------------------
def ignore_missing_keys(model, patterns) -> None:
    """Add regexes to the keys transformers must not report as newly initialised: `_keys_to_ignore_on_load_missing`,
    which post_init turns into a per-instance set."""
    keys = getattr(model, "_keys_to_ignore_on_load_missing", None)
    if not isinstance(keys, set):
        raise InternalsChanged("transformers' _keys_to_ignore_on_load_missing is no longer a per-instance set after "
                               f"post_init (got {type(keys).__name__}); pin the tested transformers version")
    keys.update(patterns)


_LLM_ARGUMENTS = ("inputs_embeds", "position_ids", "logits_to_keep")


def llama_forward():
    """LlamaForCausalLM.forward, to be called unbound on a subclass whose own forward adds pixels: its arguments
    checked once (the LLM-only call vidmini makes: inputs_embeds, position_ids, the cache, logits_to_keep)."""
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    forward = LlamaForCausalLM.forward
    params = inspect.signature(forward).parameters
    missing = [a for a in _LLM_ARGUMENTS if a not in params]
    if missing or not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise InternalsChanged(f"LlamaForCausalLM.forward no longer takes {', '.join(missing) or '**kwargs'}; pin the "
                               "tested transformers version")
    return forward


def rotary_function(attention):
    """The `apply_rotary_pos_emb(q, k, cos, sin)` of the module that defines `attention`'s class: the function the
    attention rotates its own queries and keys with (Llama's, Qwen2's, Qwen2.5-VL's, whose decoder's `rotary_emb`
    has already laid M-RoPE's (time, row, column) sections out in cos / sin). --evidence rotates re-scored queries
    with it. Checked: it exists and takes (q, k, cos, sin) and nothing else that is required (Qwen2.5-VL's 4.x code
    wanted an mrope_section as well)."""
    module = sys.modules.get(type(attention).__module__)
    function = getattr(module, "apply_rotary_pos_emb", None)
    params = inspect.signature(function).parameters if callable(function) else {}
    required = [name for name, p in params.items() if p.default is p.empty]
    if required != ["q", "k", "cos", "sin"]:
        raise InternalsChanged(f"{type(attention).__module__}.apply_rotary_pos_emb is not (q, k, cos, sin) any more "
                               f"(got {required or 'nothing'}); --evidence rotates its queries with it: pin the "
                               "tested transformers version")
    return function


# ---- torch --------------------------------------------------------------------------------------------------------
def _cuda_memory(name: str):
    import torch

    function = getattr(torch.cuda.memory, name, None)
    if function is None:
        raise InternalsChanged(f"torch.cuda.memory.{name} is gone (--memory-snapshot records the allocator with it); "
                               "pin the tested torch version")
    return function


def start_memory_history(max_entries: int) -> None:
    """The CUDA allocator's history, for a snapshot that pytorch.org/memory_viz opens."""
    _cuda_memory("_record_memory_history")(max_entries=max_entries)


def dump_memory_history(path: str) -> None:
    """Write the history as a pickle, and stop recording."""
    _cuda_memory("_dump_snapshot")(path)
    _cuda_memory("_record_memory_history")(enabled=None)


def int8_weight_matmul():
    """torch's int8 weight-only product, x [n, in] bfloat16 @ (weight [out, in] int8 * scales [out] bfloat16)^T
    (`aten::_weight_int8pack_mm`, what gpt-fast's int8 path calls): --quantize 8bit on a CPU
    (vidmini.families.int8_cpu checks its products at load)."""
    import torch

    function = getattr(torch, "_weight_int8pack_mm", None)
    if function is None:
        raise InternalsChanged(f"torch {torch.__version__} has no _weight_int8pack_mm (--quantize 8bit on a CPU "
                               "runs its int8 weights with it); use --quantize none or pin the tested torch version")
    return function
