"""The engine: batched frames/s against the one-frame-at-a-time loop of the reference, and memory against
video length.

    python bench/engine.py [--size tiny|small|8b] [--frames 96] [--lengths 600,3600,10800] [--out ...]

Part 1 runs the same frames through (a) the reference's loop (one frame: CLIP, compressor, projector,
pre-fusion, then the next frame) and (b) vidmini's batched engine, in the same process, and reports the ratio.
Part 2 runs `vidmini ask --profile-memory` on generated 1 fps videos of each length (in fresh processes) and
reports peak CPU RSS (and peak device memory on CUDA), frames used, and the per-frame slope. On CUDA with
--size 8b the model has the released dimensions (random weights, fp16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PEAK = """
import json, resource, sys
from vidmini.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
"""


def throughput(size: str, frames: int, batch: int, device: str) -> dict:
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.families.llava_mini.prefusion import FusionLayout
    from vidmini.inputs.preprocess import normalize
    from vidmini.testing.tiny_checkpoint import build_model, build_tokenizer
    from vidmini.inputs.video.frames import FrameBatch

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer = build_tokenizer()
    model = build_model(size, vocab_size=len(tokenizer) if size != "8b" else 128256, dtype=dtype).to(device)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (frames, 336, 336, 3), dtype=np.uint8)
    engine = Engine(model, tokenizer, EngineOptions(batch_size=batch, max_new_tokens=1))
    question = "What happens in this video?"
    layout = FusionLayout.build([engine.prompt_ids(question)])

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def one_at_a_time():  # the reference: a Python loop over frames, each through every stage alone
        total = None
        for t in range(frames):
            pv = normalize(torch.from_numpy(pixels[t : t + 1]).to(device), engine.stats)
            vision, compressed = model.encode_frames(pv)
            _, text = model.fuse(vision, compressed, layout)
            total = text.float().sum(0) if total is None else total + text.float().sum(0)
        return total

    def batched():
        batches = (FrameBatch(pixels[i : i + batch], np.zeros(len(pixels[i : i + batch])), np.arange(i, min(frames, i + batch)))
                   for i in range(0, frames, batch))
        return engine.encode(batches, frames, [Query(question)])

    out = {}
    for name, fn in (("one_frame_loop", one_at_a_time), ("batched_engine", batched)):
        fn()  # warm-up
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out[name] = frames / (time.perf_counter() - start)
    out["speedup"] = out["batched_engine"] / out["one_frame_loop"]
    out.update(size=size, frames=frames, batch=batch, device=device, dtype=str(dtype).replace("torch.", ""))
    return out


def memory_vs_length(lengths: list[int], checkpoint: str, device: str) -> list[dict]:
    from vidmini.testing.videos import make_video

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            video = make_video(os.path.join(tmp, f"{seconds}.mp4"), seconds, fps=1.0)
            args = ["ask", "--json", "--profile-memory", "--no-cache", "--quiet", "--model", checkpoint,
                    "--device", device, "--batch-size", "32", "--max-new-tokens", "8", video, "What happens?"]
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, timeout=7200)
            stats = json.loads(out.stderr.strip().splitlines()[-1])
            if stats["code"] != 0:
                raise SystemExit(out.stderr)
            result = json.loads(out.stdout)
            mem = result["memory"]
            rows.append({"video_s": seconds, "frames_used": result["frames_used"],
                         "wall_s": round(time.perf_counter() - started, 1),
                         "peak_rss_mb": stats["peak_rss_kb"] / 1024,
                         "peak_device_allocated_mb": (mem["peak"]["device_allocated_bytes"] or 0) / 2**20 or None,
                         "slope_bytes_per_frame_measured": mem["slope_bytes_per_frame"],
                         "frames_per_s": result["frames_used"] / max(1e-9, sum(
                             result["timings_s"].get(k, 0) for k in ("decode", "vision encode", "pre-fusion")))})
    first, last = rows[0], rows[-1]
    extra = last["frames_used"] - first["frames_used"]
    for key in ("peak_rss_mb", "peak_device_allocated_mb"):
        if first[key] is not None and last[key] is not None and extra:
            rows.append({"slope_" + key.replace("_mb", "_mb_per_frame"): (last[key] - first[key]) / extra})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "8b"])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", default="600,3600,10800", help="video lengths in seconds (1 fps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine.json"))
    args = parser.parse_args()
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    results = {"machine": machine, "throughput": [], "memory": []}
    for size in dict.fromkeys([args.size, "tiny", "small"] if args.size != "8b" else ["8b"]):
        row = throughput(size, args.frames, args.batch, args.device)
        results["throughput"].append(row)
        print(f"{size:6s} {row['device']} {row['dtype']}: one frame at a time {row['one_frame_loop']:.1f} frames/s, "
              f"batched ({row['batch']}) {row['batched_engine']:.1f} frames/s -> {row['speedup']:.2f}x")
    if args.lengths:
        from vidmini.testing.tiny_checkpoint import write_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = write_checkpoint(os.path.join(tmp, "ckpt"), size="tiny" if args.size == "8b" else args.size)
            results["memory"] = memory_vs_length([int(x) for x in args.lengths.split(",")], checkpoint, args.device)
        for row in results["memory"]:
            print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out} ({machine})", file=sys.stderr)


if __name__ == "__main__":
    main()
