"""Every GPU figure the README still lacks, in one run on one GPU (planned to fit 8 minutes on an H200), as one JSON.

    python bench/device_check.py [--fixture DIR] [--out bench/results/device_check.json]   # on the GPU machine
    python bench/device_check.py --smoke --out /tmp/x.json                                 # CPU, tiny, seconds

Sections (each timed; a failing section is recorded with its error and the others still run):
  drift_fixture     fp16 / bf16 against fp32 on the reference fixture (max |logit diff|, greedy tokens equal)
  drift_8b          the same on a random model of the released dimensions (one frame + a prompt)
  quantized_8bit    a checkpoint loaded through `--quantize 8bit`: weight bytes, logit drift against fp16
  throughput_8b     batched engine vs the reference's one-frame loop, frames/s (bench/engine.py's measurement)
  three_hours_8b    10,800 frames at 1 fps through the `ask` pipeline with --profile-memory in fp16: peak device
                    memory, per-frame slope, wall time
--smoke runs every section on the CPU at tiny sizes (a 20-frame video, 2 frames of throughput) so the test suite
proves the script works before a GPU is lent; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import vidmini  # noqa: F401  (registers the LLaVA-Mini classes with transformers' Auto classes)

HERE = Path(__file__).resolve().parent
QUESTION = "What happens in this video?"


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__})"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _logits_and_tokens(model, ids: torch.Tensor, pixels: torch.Tensor, steps: int = 5) -> tuple[torch.Tensor, list]:
    """The last position's logits and the greedy tokens, from one `generate`: its first step's logits are the
    prompt's forward pass (equal bit for bit to model(...).logits[0, -1] on the CPU, fixture and random model, all
    three dtypes), so the forward is not run a second time."""
    dtype = model.compute_dtype
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=pixels.to(dtype), max_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    return out.logits[0][0].float().cpu(), out.sequences[0].tolist()


def drift(model32, ids: torch.Tensor, pixels: torch.Tensor) -> dict:
    """fp16 and bf16 copies of an fp32 model, against it: the largest logit difference, and whether greedy tokens
    stay the same."""
    ref_logits, ref_tokens = _logits_and_tokens(model32, ids, pixels)
    out = {"fp32_tokens": ref_tokens, "logit_std_fp32": float(ref_logits.std())}
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        half = copy.deepcopy(model32).to(dtype)
        logits, tokens = _logits_and_tokens(half, ids, pixels)
        out[name] = {"max_abs_logit_diff": max_diff(logits, ref_logits), "tokens_equal": tokens == ref_tokens}
        del half
    return out


def drift_fixture(args, device: str) -> dict:
    import numpy as np
    from transformers import AutoModelForCausalLM

    ckpt = Path(args.fixture) / "llava_mini_tiny_c1"
    if not ckpt.is_dir():
        return {"skipped": f"no fixture at {ckpt} (carry ../shared/fixtures with the repo)"}
    ref = np.load(ckpt / "reference_io.npz")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(device)
    out = {}
    # --smoke checks the script, and the CPU's fp16/bf16 kernels are slow: the image only (the video is 5 frames)
    for kind in ("image",) if args.smoke else ("image", "video"):
        ids = torch.from_numpy(ref["input_ids"])[None].to(device)  # [1, L]
        pixels = torch.from_numpy(ref[f"{kind}_pixel_values"]).reshape(-1, 3, 336, 336).to(device)  # [T, 3, S, S]
        out[kind] = drift(model, ids, pixels)
        with torch.no_grad():
            logits32 = model(input_ids=ids, pixel_values=pixels).logits[0]
        out[kind]["fp32_vs_reference_max_abs"] = max_diff(logits32, torch.from_numpy(ref[f"{kind}_logits_all"]))
    return out


def random_model(size: str, dtype, device: str):
    from vidmini.testing.tiny_checkpoint import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    vocab = 128256 if size == "8b" else len(tokenizer)
    return build_model(size, vocab_size=vocab, dtype=dtype, device=device), tokenizer


def drift_random(size: str, device: str) -> dict:
    from vidmini.families.llava_mini.prompt import build_prompt_ids

    model, tokenizer = random_model(size, torch.float32, device)
    ids = torch.tensor([build_prompt_ids(tokenizer, QUESTION)], device=device)
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0)).to(device)
    out = drift(model, ids, pixels)
    del model
    return {"size": size, **out}


def quantized_8bit(size: str, device: str) -> dict:
    from vidmini.infra.memory_report import weights_by_component
    from vidmini.families.loading import LoadOptions, load_model
    from vidmini.families.llava_mini.prompt import build_prompt_ids
    from vidmini.testing.tiny_checkpoint import write_checkpoint

    if not device.startswith("cuda"):
        return {"skipped": "bitsandbytes 8-bit needs a CUDA device"}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(os.path.join(tmp, "ckpt"), size=size)
        half, tokenizer = load_model(LoadOptions(path, device, "float16"))
        q8, _ = load_model(LoadOptions(path, device, "float16", "8bit"))
        ids = torch.tensor([build_prompt_ids(tokenizer, QUESTION)], device=device)
        pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0)).to(device)
        ref_logits, ref_tokens = _logits_and_tokens(half, ids, pixels)
        logits, tokens = _logits_and_tokens(q8, ids, pixels)
        sizes = {k: v["bytes"] for k, v in weights_by_component(q8).items()}
        return {"size": size, "weights_bytes_8bit": sizes, "max_abs_logit_diff_vs_fp16": max_diff(logits, ref_logits),
                "tokens_equal_fp16": tokens == ref_tokens,
                "llm_dtypes": weights_by_component(q8)["llm"]["dtypes"]}


def throughput(size: str, frames: int, batch: int, device: str) -> dict:
    spec = importlib.util.spec_from_file_location("bench_engine", HERE / "engine.py")
    bench_engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_engine)
    return bench_engine.throughput(size, frames, batch, device)


def long_video(size: str, seconds: int, device: str) -> dict:
    """The whole `ask` pipeline (decode, encode, buffer, answer) with memory profiling, on a generated video."""
    from vidmini.jobs.ask import run_ask
    from vidmini.infra.memory import Recorder
    from vidmini.inputs.sources import Sampling
    from vidmini.testing.videos import make_video

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model, tokenizer = random_model(size, dtype, device)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        video = make_video(os.path.join(tmp, "long.mp4"), seconds, fps=1.0)
        made = time.perf_counter() - started
        recorder = Recorder(memory=True, device=device)
        started = time.perf_counter()
        result = run_ask(model, tokenizer, video, [QUESTION], model_name=f"random {size}", sampling=Sampling(),
                         max_new_tokens=8, use_cache=False, profile_memory=True, progress=False, recorder=recorder)
        wall = time.perf_counter() - started
    memory = result["memory"]
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "video_s": seconds,
            "frames_used": result["frames_used"], "video_generation_s": round(made, 1), "wall_s": round(wall, 1),
            "timings_s": result["timings_s"], "peak": memory["peak"], "slope_bytes_per_frame": memory["slope_bytes_per_frame"],
            "weights_total_bytes": memory["weights"]["total_bytes"], "projection": memory["projection"]}


def run_section(results: dict, name: str, fn, *args) -> None:
    started = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as err:  # noqa: BLE001  one section failing must not cost the others their figures
        results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=5)}
    results[name]["section_s"] = round(time.perf_counter() - started, 1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"{name}: {json.dumps(results[name])[:600]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check the script, not the GPU")
    parser.add_argument("--fixture", default=str(HERE.parent.parent / "shared" / "fixtures"))
    parser.add_argument("--out", default=str(HERE / "results" / "device_check.json"))
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("device_check: no CUDA device; use --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    size, seconds, frames = ("tiny", 20, 2) if args.smoke else ("8b", 3 * 3600, 64)
    results: dict = {"machine": machine(device), "smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    run_section(results, "drift_fixture", drift_fixture, args, device)
    run_section(results, "drift_8b", drift_random, size, device)
    run_section(results, "quantized_8bit", quantized_8bit, "small", device)
    run_section(results, "throughput_8b", throughput, size, frames, 16, device)
    run_section(results, "three_hours_8b", long_video, size, seconds, device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out} ({results['machine']})", file=sys.stderr)
    return 1 if any("error" in v for v in results.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
