"""VisionZip's cost in the vision encoder: per-frame encode time and peak memory, three ways, in one run.

    python bench/visionzip.py [--frames 1] [--repeats 3] [--dominant 54 --contextual 10] [--device cpu|cuda]
    python bench/visionzip.py --engine   # through the engine: the video VLM backends and LLaVA-Mini
                                         # --prefusion-tokens 64 (bench/visionzip_engine.py; CPU)

On CLIP ViT-L/14-336 dimensions (24 layers, hidden 1024, 16 heads, 577 tokens) with random weights:

- full:      what LLaVA does today: every layer on SDPA, `output_hidden_states=True`, features of layer -2
             (577 tokens out);
- visionzip: `vidmini.reduce.visionzip.reduce_tokens` (layers 0..22 on SDPA, CLS row recomputed from q/k,
             D + C tokens out);
- naive:     the reference's way: eager attention and `output_attentions=True` on all 24 layers, the CLS row read
             from layer -2's weights, then the same selection and merge.

Time: the paths run interleaved, `repeats` rounds after one warm-up round, in this process; the median per path
and the ratios to `full` come from the same rounds, as wall time and as this process's CPU time (steadier when
neighbours load a shared CPU). Memory: each path runs once more in a fresh subprocess; on
CUDA its `max_memory_allocated`, on CPU its peak RSS (VmHWM, reset after the model is built) above the RSS at that
point; that includes allocator slack. No assertion anywhere: it prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768,
)
PATHS = ("full", "visionzip", "naive")


def build(device: str, dtype: torch.dtype, layers: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(**{**CLIP_L_336, "num_hidden_layers": layers})
    return CLIPVisionModel(config).to(device=device, dtype=dtype).eval()


def run_path(name: str, model, pixels: torch.Tensor, dominant: int, contextual: int) -> torch.Tensor:
    from vidmini.reduce.visionzip import reduce_tokens, select_and_merge

    with torch.no_grad():
        if name == "full":
            return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # [B, 577, 1024]
        if name == "visionzip":
            return reduce_tokens(model, pixels, dominant, contextual, layer=-2)[0]  # [B, D + C, 1024]
        model.set_attn_implementation("eager")
        try:
            out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        finally:
            model.set_attn_implementation("sdpa")
        scores = out.attentions[-2][:, :, 0].float().sum(dim=1)  # [B, N] the reference's ranking signal
        layer = model.encoder.layers[-2]
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))  # [B, N, hidden]
        metric = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(dim=2)  # [B, N, d]
        return select_and_merge(out.hidden_states[-2], metric, scores, dominant, contextual, has_cls=True)[0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timing(args, device, dtype) -> dict:
    model = build(device, dtype, args.layers)
    pixels = torch.randn(args.frames, 3, 336, 336, device=device, dtype=dtype)
    wall = {p: [] for p in PATHS}
    cpu = {p: [] for p in PATHS}
    tokens = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for p in PATHS:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = run_path(p, model, pixels, args.dominant, args.contextual)
            sync(device)
            if round_:
                wall[p].append((time.perf_counter() - t0) / args.frames)
                cpu[p].append((time.process_time() - c0) / args.frames)
            tokens[p] = out.shape[1]
    # On a shared CPU, wall time swings with the neighbours' load; this process's CPU time much less.
    return {p: {"s_per_frame": statistics.median(wall[p]), "cpu_s_per_frame": statistics.median(cpu[p]),
                "runs_s_per_frame": wall[p], "runs_cpu_s_per_frame": cpu[p], "tokens": tokens[p]} for p in PATHS}


def status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def reset_rss_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (the RSS high-water mark) to the current RSS, so the peak
    # measured next excludes the model build.
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(args) -> None:
    """One path, once, in this fresh process; prints its peak working memory (MB) as JSON."""
    device, dtype = args.device, getattr(torch, args.dtype)
    model = build(device, dtype, args.layers)
    pixels = torch.randn(args.frames, 3, 336, 336, device=device, dtype=dtype)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_rss_peak()
        base = status_mb("VmRSS")
    run_path(args.child, model, pixels, args.dominant, args.contextual)
    sync(device)
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = status_mb("VmHWM") - base
    print(json.dumps({"peak_mb": peak}))


def memory(args) -> dict:
    out = {}
    for p in PATHS:
        cmd = [sys.executable, __file__, "--child", p, "--device", args.device, "--dtype", args.dtype,
               "--frames", str(args.frames), "--layers", str(args.layers), "--threads", str(args.threads),
               "--dominant", str(args.dominant), "--contextual", str(args.contextual)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[p] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dominant", type=int, default=54)
    parser.add_argument("--contextual", type=int, default=10)
    parser.add_argument("--layers", type=int, default=24, help="encoder depth (24 = CLIP-L/14-336)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "visionzip.json"))
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--engine", action="store_true", help="the engine-level bench (bench/visionzip_engine.py)")
    parser.add_argument("--engine-frames", type=int, default=8, help="frames per engine timing run")
    parser.add_argument("--agreement-frames", type=int, default=8, help="frames per video in the agreement runs")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens compared per answer")
    args = parser.parse_args()
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    torch.set_num_threads(args.threads)
    if args.child:
        return memory_child(args)
    if args.engine:
        return engine_bench(args)

    dtype = getattr(torch, args.dtype)
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name(args.device)}, {args.dtype}"
    else:
        machine = (f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
                   f"load {os.getloadavg()[0]:.1f}), {args.dtype}")
    times = timing(args, args.device, dtype)
    peaks = memory(args)
    full, full_cpu = times["full"]["s_per_frame"], times["full"]["cpu_s_per_frame"]
    rows = []
    for p in PATHS:
        t = times[p]
        rows.append({"path": p, "tokens": t["tokens"], "s_per_frame": t["s_per_frame"],
                     "speedup_vs_full": full / t["s_per_frame"], "cpu_s_per_frame": t["cpu_s_per_frame"],
                     "cpu_speedup_vs_full": full_cpu / t["cpu_s_per_frame"], "peak_mb": peaks[p],
                     "runs_s_per_frame": t["runs_s_per_frame"], "runs_cpu_s_per_frame": t["runs_cpu_s_per_frame"]})
    lines = [f"VisionZip {args.dominant}+{args.contextual} on CLIP-L/14-336 dims ({args.layers} layers), random "
             f"weights, {args.frames} frames per call, median of {args.repeats} interleaved rounds; {machine}",
             "| path | tokens/frame | wall s/frame | vs full | process CPU s/frame | vs full | peak working memory (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['tokens']} | {r['s_per_frame']:.3f} | {r['speedup_vs_full']:.2f}x | "
                     f"{r['cpu_s_per_frame']:.3f} | {r['cpu_speedup_vs_full']:.2f}x | {r['peak_mb']:.0f} |")
    print("\n".join(lines))
    result = {"machine": machine, "frames": args.frames, "repeats": args.repeats, "layers": args.layers,
              "dominant": args.dominant, "contextual": args.contextual, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"saved {args.out}", file=sys.stderr)


def engine_bench(args) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import visionzip_engine

    machine = (f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
               f"load {os.getloadavg()[0]:.1f}), float32")
    result, lines = visionzip_engine.run(args)
    lines.insert(0, f"machine: {machine}")
    print("\n".join(lines))
    out = Path(args.out).with_name("visionzip_engine.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, **result}, indent=1))
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"saved {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
