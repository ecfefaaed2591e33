"""The demo model's answers, checked: accuracy by question type on held-out generated clips, and a needle test.

    python bench/accuracy.py [--clips 60] [--sequences 30] [--needle-lengths 600,3600,10800]
                             [--needle-positions 0.1,0.5,0.9] [--out bench/results/accuracy]

Part 1: still clips (one scene, 1-3 items, 3-8 s) and sequence clips (items appearing one after another, 20-40 s)
drawn from held-out seeds (0..999; training draws from other seeds), written as H.264 files at random sizes and
qualities, every question of a clip asked in one `ask` pass (one model load for all clips). Accuracy by type; for
"when" questions also whether the top `--evidence` moment lies on the item's first showing (within 3 s).
Part 2: one item shown for 5 s at a chosen position of a 1-fps video of backgrounds only (10 min, 1 h, 3 h), asked
through `vidmini ask --model demo --json` in a fresh process each, so the time includes the model load. Where
the video has more frames than the LLM's 8k context holds, the engine's capacity rule samples fewer frames spread
over the whole video (its note is recorded). Saves OUT.json, OUT.txt and OUT.png (accuracy by length x position).
Also measures the LLM's greedy decode speed (tokens/s) on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vidmini.demo.clips import needle_video, sequence_clip, still_clip  # noqa: E402
from vidmini.demo.questions import MAKERS, SINGLE_EVENT, TEMPORAL, needle_question  # noqa: E402
from vidmini.demo.video import write_video  # noqa: E402

LOOKS = [(336, 336, 20), (320, 240, 28), (224, 224, 32), (480, 270, 23), (160, 160, 26)]  # width, height, crf


def load_demo(model_id: str, dtype: str = "auto", quantize: str = "auto"):
    """model_id: "demo" (the shipped weights) or a candidate folder of the same layout (train/align.py's export);
    dtype and quantize as `vidmini ask` takes them (auto: what `vidmini ask` runs by default)."""
    from vidmini.families.loading import LoadOptions, load_model

    return load_model(LoadOptions(model=model_id, device="cpu", dtype=dtype, quantize=quantize))


def clip_questions(tl, rng: random.Random, kinds: list[str]):
    """Every kind in `kinds` this clip answers unambiguously (one question per kind)."""
    out = []
    for kind in kinds:
        qa = MAKERS[kind](tl, rng)
        if qa is not None and all(q.question != qa.question for q in out):
            out.append(qa)
    return out


def part_by_type(model, tokenizer, n_still: int, n_seq: int, work: Path, prefusion_tokens: int | None = None) -> dict:
    from vidmini.jobs.ask import Sampling, run_ask

    results = defaultdict(lambda: [0, 0])
    evidence = [0, 0]  # "when" questions whose top evidence moment lies on the item's first showing (+- 3 s), asked
    rows = []  # every question asked: what went wrong, by type (e.g. which counts a count question answers)
    for i in range(n_still + n_seq):
        rng = random.Random(i)  # held-out: training seeds are 1000+ (see train/)
        if i < n_still:
            tl, kinds = still_clip(rng, float(rng.randint(3, 8))), SINGLE_EVENT
        else:
            tl, kinds = sequence_clip(rng, float(rng.randint(20, 40))), TEMPORAL + SINGLE_EVENT
        qas = clip_questions(tl, rng, kinds)
        if not qas:
            continue
        w, h, crf = rng.choice(LOOKS)
        path = str(work / f"clip{i}.mp4")
        write_video(tl, path, fps=rng.choice([1, 2, 5]), width=w, height=h, crf=crf, noise=rng.choice([0, 0, 4]))
        out = run_ask(model, tokenizer, path, [q.question for q in qas], model_name="demo", sampling=Sampling(),
                      max_new_tokens=16, use_cache=False, progress=False, evidence=1,
                      prefusion_tokens=prefusion_tokens)
        for qa, a in zip(qas, out["answers"]):
            ok = qa.check(a["answer"])
            results[qa.kind][0] += ok
            results[qa.kind][1] += 1
            if qa.kind == "when":  # where the answer looked: the top --evidence moment on the item's first showing
                evidence[0] += evidence_on(tl, qa, a["evidence"])
                evidence[1] += 1
            rows.append({"clip": i, "kind": qa.kind, "question": qa.question, "expected": qa.answer,
                         "answer": a["answer"], "right": ok})
    table = {k: {"right": r, "asked": n, "accuracy": round(r / n, 3)} for k, (r, n) in sorted(results.items())}
    single = [results[k] for k in SINGLE_EVENT if k in results]
    r, n = sum(x[0] for x in single), sum(x[1] for x in single)
    return {"by_type": table, "single_event": {"right": r, "asked": n, "accuracy": round(r / max(1, n), 3)},
            "when_evidence": {"on_the_item": evidence[0], "asked": evidence[1],
                              "rate": round(evidence[0] / max(1, evidence[1]), 3)},
            "rows": rows}


def evidence_on(tl, qa, found: list[dict], tolerance_s: float = 3.0) -> bool:
    """Whether the top evidence moment lies within tolerance_s of the first showing of the item a "when" question
    names ("When does the red star first appear?", "... the digit 7 ...")."""
    first = min((e for e in tl.events if f" the {e.item.colour} {e.item.value} " in qa.question
                 or f" the {e.item.kind} {e.item.value} " in qa.question), key=lambda e: e.start)
    return bool(found) and max(first.start - found[0]["end_s"], found[0]["start_s"] - first.end) <= tolerance_s


def needle_evidence_on(event, found: list[dict], tolerance_s: float = 3.0) -> bool:
    """Whether the top evidence moment lies within tolerance_s of the needle's showing (issue 19's measure)."""
    return bool(found) and max(event.start - found[0]["end_s"], found[0]["start_s"] - event.end) <= tolerance_s


def part_needle(lengths: list[int], positions: list[float], work: Path, model_id: str, seed: int = 500,
                prefusion_tokens: int | None = None, dtype: str = "auto", quantize: str = "auto") -> list[dict]:
    rows = []
    for li, length in enumerate(lengths):
        for pi, pos in enumerate(positions):
            rng = random.Random(seed + 100 * li + pi)
            tl = needle_video(rng, float(length), pos * length, 5.0)
            qa = needle_question(tl, rng)
            path = str(work / f"needle_{length}_{pi}.mp4")
            t0 = time.monotonic()
            write_video(tl, path, fps=1.0, width=128, height=128, crf=26)
            made = time.monotonic() - t0
            cmd = [sys.executable, "-m", "vidmini", "ask", path, qa.question, "--model", model_id, "--json",
                   "--no-cache", "--max-new-tokens", "16", "--evidence", "1", "--dtype", dtype,
                   "--quantize", quantize]
            if prefusion_tokens:
                cmd += ["--prefusion-tokens", str(prefusion_tokens)]
            t0 = time.monotonic()
            threads = os.environ.get("VIDMINI_BENCH_THREADS", "2")
            env = {**os.environ, "OMP_NUM_THREADS": threads}  # torch's intra-op threads in the child
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env)
            wall = time.monotonic() - t0
            row = {"threads": int(threads), "length_s": length, "position": pos, "needle_at_s": round(tl.events[0].start, 1),
                   "item": tl.events[0].item.describe(), "question": qa.question, "expected": qa.answer,
                   "exit": proc.returncode, "answer_time_s": round(wall, 1), "video_write_s": round(made, 1)}
            if proc.returncode == 0:
                out = json.loads(proc.stdout)
                answer = out["answers"][0]["answer"]
                found = out["answers"][0].get("evidence", [])
                row.update(answer=answer, right=qa.check(answer), frames_used=out["frames_used"],
                           notes=out["notes"], timings_s=out["timings_s"], evidence=found,
                           evidence_on_needle=needle_evidence_on(tl.events[0], found))
            else:
                row.update(answer=None, right=False, error=proc.stderr.strip().splitlines()[-1:])
            print(json.dumps(row), flush=True)
            rows.append(row)
            os.remove(path)
    return rows


def decode_speed(model, tokenizer, tokens: int = 64) -> float:
    """Greedy decode tokens per second after a prompt, through the engine's own prefill and decode steps (what
    `vidmini ask` runs: the preallocated KV cache, last-position logits), timed from the first new token on."""
    import torch

    from vidmini.engine.generate import decode_step, greedy, new_cache, prefill

    ids = tokenizer("Write a long story about a red circle and a blue square.").input_ids
    embeds = model.get_input_embeddings()(torch.tensor(ids))  # [P, H]

    def timed() -> float:
        cache = new_cache(model, len(ids) + tokens + 1)
        token = greedy(prefill(model, [embeds], cache))
        t0 = time.monotonic()
        for i in range(tokens):
            token = greedy(decode_step(model, token, len(ids) + i, cache))
        return time.monotonic() - t0

    timed()  # warm-up
    return tokens / min(timed(), timed())


def heat_map(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = sorted({r["length_s"] for r in rows})
    positions = sorted({r["position"] for r in rows})
    grid = np.full((len(lengths), len(positions)), np.nan)
    for r in rows:
        grid[lengths.index(r["length_s"]), positions.index(r["position"])] = float(r["right"])
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(positions), 1.2 + 0.8 * len(lengths)))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(positions)), [f"{p:.0%}" for p in positions])
    ax.set_yticks(range(len(lengths)), [f"{l // 60} min" if l < 3600 else f"{l / 3600:g} h" for l in lengths])
    ax.set_xlabel("needle position in the video")
    ax.set_ylabel("video length (1 fps)")
    for i in range(len(lengths)):
        for j in range(len(positions)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, "right" if grid[i, j] else "wrong", ha="center", va="center", fontsize=8)
    ax.set_title("demo model: needle answered right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=60, help="still clips (single-event questions)")
    parser.add_argument("--sequences", type=int, default=30, help="sequence clips (temporal questions)")
    parser.add_argument("--needle-lengths", default="600,3600,10800")
    parser.add_argument("--needle-positions", default="0.1,0.5,0.9")
    parser.add_argument("--out", default=str(ROOT / "bench/results/accuracy"))
    parser.add_argument("--model", default="demo", help="demo, or a folder exported by train/align.py")
    parser.add_argument("--prefusion-tokens", type=int, default=None, metavar="K",
                        help="ask with vidmini's --prefusion-tokens K (VisionZip before pre-fusion); default: exact")
    parser.add_argument("--dtype", default="auto", help="vidmini's --dtype for every answer (auto: float32 here)")
    parser.add_argument("--quantize", default="auto",
                        help="vidmini's --quantize (auto: int8 weights for a model that declares them on CPU, as the demo)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="combine the JSON reports of runs made in parallel (e.g. one per needle length) into OUT")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        report = {k: v for part in parts for k, v in part.items() if k != "needle"}
        report["needle"] = [row for part in parts for row in part.get("needle", [])]
        write_report(report, args.out)
        return
    import torch

    torch.set_num_threads(int(os.environ.get("VIDMINI_BENCH_THREADS", "2")))
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch_threads": torch.get_num_threads()},
              "model": args.model, "prefusion_tokens": args.prefusion_tokens, "dtype": args.dtype,
              "quantize": args.quantize}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        model, tokenizer = load_demo(args.model, args.dtype, args.quantize)
        report["load_s"] = round(time.monotonic() - t0, 1)
        report["decode_tokens_per_s"] = round(decode_speed(model, tokenizer), 1)
        print(f"decode: {report['decode_tokens_per_s']} tokens/s", flush=True)
        if args.clips + args.sequences:
            report["questions"] = part_by_type(model, tokenizer, args.clips, args.sequences, work,
                                               args.prefusion_tokens)
            print(json.dumps(report["questions"]["by_type"], indent=1), flush=True)
        del model
        lengths = [int(x) for x in args.needle_lengths.split(",") if x]
        positions = [float(x) for x in args.needle_positions.split(",") if x]
        report["needle"] = part_needle(lengths, positions, work, args.model, prefusion_tokens=args.prefusion_tokens,
                                       dtype=args.dtype, quantize=args.quantize) \
            if lengths else []
    write_report(report, args.out)


def write_report(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(report, indent=1))
    lines = [f"decode speed: {report.get('decode_tokens_per_s')} tokens/s; model load in-process {report.get('load_s')} s"]
    if "questions" in report:
        lines.append("question type        right/asked  accuracy")
        for k, v in report["questions"]["by_type"].items():
            lines.append(f"{k:20s} {v['right']:5d}/{v['asked']:<5d}  {v['accuracy']:.1%}")
        s = report["questions"]["single_event"]
        lines.append(f"{'single-event (all)':20s} {s['right']:5d}/{s['asked']:<5d}  {s['accuracy']:.1%}")
        w = report["questions"].get("when_evidence")
        if w:
            lines.append(f"{'when: top evidence':20s} {w['on_the_item']:5d}/{w['asked']:<5d}  {w['rate']:.1%}"
                         "  (on the item's first showing, +- 3 s)")
    if report["needle"]:
        lines.append("needle: length  position  frames  right  evidence +-3s  answer time (s, load included)  answer")
        for r in report["needle"]:
            lines.append(f"{r['length_s']:>13d}  {r['position']:8.0%}  {r.get('frames_used', '-')!s:>6}  "
                         f"{str(r['right']):5s}  {str(r.get('evidence_on_needle', '-')):13s}  {r['answer_time_s']:8.1f}  "
                         f"{r.get('answer')!r} (expected {r['expected']})")
        for length in sorted({r["length_s"] for r in report["needle"]}):
            rows = [r for r in report["needle"] if r["length_s"] == length]
            placed = sum(bool(r.get("evidence_on_needle")) for r in rows)
            lines.append(f"needle {length} s: answer right {sum(r['right'] for r in rows)}/{len(rows)}, top evidence "
                         f"on the needle {placed}/{len(rows)}, answer time max {max(r['answer_time_s'] for r in rows)} s")
        heat_map(report["needle"], out + ".png")
    Path(out + ".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
