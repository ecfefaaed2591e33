"""How fast can the demo model's greedy decode go on this CPU, and what bounds it.

    python bench/decode_ceiling.py [--rounds 3] [--out bench/results/decode_ceiling]

A decode step reads every weight of the LLM once (SmolLM2-135M: 30 layers of q/k/v/o/gate/up/down and the tied
49,152-row output head, 538 MB in float32) to produce one token, so its speed is bounded by how fast the matrix-vector
products stream those weights. Measured here, in the same run and round-robin so that load from elsewhere hits
every row alike (best round counts):

- engine: `vidmini ask`'s own prefill/decode steps (bench/accuracy.py's decode_speed) at 1 and 2 torch threads;
- ceiling: the same weights through F.linear with a one-row input, in decode's order, nothing else: the
  tokens/s decode would reach with zero overhead outside the matrix products (float32, and float16 copies);
- what-if float16: the engine's decode with every LLM linear layer reading float16 copies of its weights
  (activations rounded to float16 at each product): how much lower precision would buy end to end. Not what
  vidmini runs: its answers are not measured here;
- engine int8: the engine with `--quantize 8bit`'s int8 weights (vidmini.families.int8_cpu), what `vidmini ask
  --model demo` runs on a CPU by default (its answers: bench/accuracy.py).

Prints a table; saves bench/results/decode_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import decode_speed, load_demo  # noqa: E402


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    simd = sorted(f for f in set(flags) if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "f16c"})
    import torch

    # the kernels torch dispatches to: ATEN_CPU_CAPABILITY=avx2 runs the AVX2 ones on an AVX512 CPU
    return {"cpu": name or platform.processor(), "simd": simd, "torch_kernels": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(),
            "load_avg_1min_at_start": os.getloadavg()[0]}


def llm_linears(model) -> list:
    """The LLM's linear layers in the order one decode step runs them, the output head last."""
    import torch

    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name]
    return layers + [model.get_output_embeddings()]


def streamed_ms(weights: list, reps: int = 5) -> float:
    """Milliseconds for one pass of one-row products over `weights` (in their own dtype): decode's matrix work
    alone."""
    import torch
    import torch.nn.functional as F

    rows = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}
    for w in weights:
        F.linear(rows[w.shape[1]], w)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in weights:
            F.linear(rows[w.shape[1]], w)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


class HalfWeights:
    """Swap every LLM linear layer's forward for a product with its float16 copy in `halves`, and back."""

    def __init__(self, linears: list, halves: list):
        self.linears, self.halves = linears, halves

    def __enter__(self):
        import torch.nn.functional as F

        for m, half in zip(self.linears, self.halves):
            m.forward = lambda x, half=half: F.linear(x.half(), half).float()

    def __exit__(self, *exc):
        for m in self.linears:
            del m.forward  # the class's forward again


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench/results/decode_ceiling"))
    args = parser.parse_args()

    machine = cpu_info()  # the load average before this run adds its own
    model, tokenizer = load_demo("demo", quantize="none")
    narrow, _ = load_demo("demo", quantize="8bit")
    linears = llm_linears(model)
    weights = [m.weight.detach() for m in linears]
    halves = [w.half() for w in weights]  # made once: the fp16 ceiling and the what-if read the same copies
    megabytes = sum(w.numel() * 4 for w in weights) / 1e6
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.setdefault(f"engine fp32, {threads} thread(s)", []).append(decode_speed(model, tokenizer))
            runs.setdefault(f"engine int8, {threads} thread(s)", []).append(decode_speed(narrow, tokenizer))
            runs.setdefault(f"ceiling fp32, {threads} thread(s)", []).append(1e3 / streamed_ms(weights))
            runs.setdefault(f"ceiling fp16, {threads} thread(s)", []).append(1e3 / streamed_ms(halves))
            with HalfWeights(linears, halves):
                runs.setdefault(f"what-if fp16 weights, {threads} thread(s)", []).append(decode_speed(model, tokenizer))
    best = {name: round(max(values), 1) for name, values in runs.items()}
    report = {"machine": machine, "torch": torch.__version__, "weights_mb_fp32": round(megabytes),
              "tokens_per_s_best": best, "tokens_per_s_all": {k: [round(v, 1) for v in vs] for k, vs in runs.items()}}
    report["machine"]["load_avg_1min_at_end"] = os.getloadavg()[0]
    print(f"{report['machine']['cpu']} ({', '.join(report['machine']['simd'])}); LLM weights {megabytes:.0f} MB fp32")
    for name, value in best.items():
        print(f"  {name:<34} {value:6.1f} tokens/s   (rounds: {report['tokens_per_s_all'][name]})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
