"""--evidence on the demo model: does the top moment land on the needle, and what does it cost?

    python bench/evidence.py [--lengths 600,3600] [--count 10] [--when 10,3] [--cost] [--all-layers]
                             [--model demo] [--seed 700] [--out bench/results/evidence]

Localisation. Per length, `count` needle videos (vidmini.demo.clips.needle_video's kind: backgrounds only, one
item shown for 5 s), the needle at spread positions ((k + 0.5 ± 0.2) / count of the video) and of every kind in
turn (shape, digit, word), asked the demo model's needle question ("What colour is the star?", "What digit is
shown?", ...) and, for the first `--when` of them, "When does ... first appear?" too. The top moment is a hit when
it lies within 3 s of the needle's time on screen; whether the answer's text is right is scored apart (a right
place with a wrong word still tells where the model looked).

To keep CPU time down, the needle videos of one length share their backgrounds, and the frames are rendered at
the 1-fps sample times (128x128, then the engine's own resize) instead of going through an H.264 file: the
background is encoded once, with every question, and each needle video is that encoding with its few needle
frames encoded and put in place (frame tokens, and each question's pre-fusion sums). That is the same engine
computation as encoding the needle video whole (up to fp32 summation order); the file path (decode, sampling
times) is what tests/test_evidence.py covers.

Cost (--cost): one real 1-hour needle file (the longest length), through vidmini.jobs.ask.run_ask exactly as `vidmini
ask` runs it, timed without, with, without --evidence in one process (the frame cache off, so each run decodes and
encodes); the answers must be identical. The cost is (with - mean of without) / mean of without.

--all-layers: evidence from every LLM layer, reporting the hit rate of each layer alone: how the default layers
(vidmini.engine.relevance.EVIDENCE_DEPTH) were chosen (calibrate on another --seed than you evaluate on).

Saves OUT.json and prints a summary. Re-run on new weights with the same command (--model a folder for a
candidate checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vidmini.demo.questions import needle_question, when  # noqa: E402
from vidmini.demo.timeline import Timeline, place, random_item, random_scenes, visible_colours  # noqa: E402

KINDS = ("shape", "digit", "word")
NEEDLE_S = 5.0
TOLERANCE_S = 3.0
SIZE = 128  # the rendered frame, as bench/accuracy.py's needle files
BATCH = 64


@dataclasses.dataclass
class Needle:
    length: int
    k: int
    timeline: Timeline
    questions: list  # [needle QA] or [needle QA, when QA]


def needles(length: int, count: int, asked_when: int, seed: int) -> tuple[Timeline, list[Needle]]:
    """The shared background of one length and its needle videos."""
    rng = random.Random(seed + length)
    scenes = random_scenes(rng, float(length), 20.0, 120.0)
    out = []
    for k in range(count):
        at = min((k + 0.5 + rng.uniform(-0.2, 0.2)) / count * length, length - NEEDLE_S)
        shown = [s for s in scenes if s.start < at + NEEDLE_S and s.end > at]
        colours = [c for c in visible_colours(shown[0]) if all(c in visible_colours(s) for s in shown)]
        item = random_item(rng, KINDS[k % len(KINDS)], colours or None)
        tl = Timeline(float(length), scenes, place(rng, [item], at, at + NEEDLE_S, moving=0.0))
        questions = [needle_question(tl, rng)] + ([when(tl, rng)] if k < asked_when else [])
        out.append(Needle(length, k, tl, questions))
    return Timeline(float(length), scenes, []), out


def batches(timeline: Timeline, times: np.ndarray, geometry):
    """FrameBatches of the timeline rendered at `times`, as the engine takes them."""
    from vidmini.demo.render import draw_background, render
    from vidmini.inputs.video import FrameBatch
    from vidmini.inputs.video.frames import model_frame

    drawn: dict[int, object] = {}
    for lo in range(0, len(times), BATCH):
        frames = []
        for t in times[lo : lo + BATCH]:
            scene = timeline.scene_at(float(t))
            if id(scene) not in drawn:
                drawn = {id(scene): draw_background(scene, SIZE, SIZE)}
            frames.append(model_frame(render(timeline, float(t), SIZE, SIZE, background=drawn[id(scene)]), 0, geometry))
        yield FrameBatch(np.stack(frames), times[lo : lo + BATCH], np.arange(lo, lo + len(frames)))


def with_needle(engine, base, background: Timeline, needle: Needle, times: np.ndarray, queries):
    """`base` (the background's encoding) with the needle's frames encoded and put in place."""
    from vidmini.engine.token_buffer import TokenBuffer

    event = needle.timeline.events[0]
    idx = np.flatnonzero((times >= event.start) & (times < event.end))
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    part = times[lo:hi]
    plain = engine.encode(batches(background, part, engine.geometry), hi - lo, queries)
    shown = engine.encode(batches(needle.timeline, part, engine.geometry), hi - lo, queries)
    old = base.buffer
    buffer = TokenBuffer(old.capacity, old.tokens_per_frame, old.data.shape[1], old.data.device, old.data.dtype)
    buffer.data.copy_(old.data)
    buffer.times.copy_(old.times)
    buffer.count = old.count
    k = old.tokens_per_frame
    buffer.data[lo * k : hi * k] = shown.buffer.data[: (hi - lo) * k]
    sums = {key: total - plain.text_sums[key] + shown.text_sums[key] for key, total in base.text_sums.items()}
    return dataclasses.replace(base, buffer=buffer, text_sums=sums)


def distance_s(moment: dict, start: float, end: float) -> float:
    """Seconds between a moment [start_s, end_s] and the needle's time on screen [start, end); 0 if they meet."""
    return max(0.0, start - moment["end_s"], moment["start_s"] - end)


def top_moment(scores, times) -> dict | None:
    from vidmini.engine.evidence import moments

    found = moments(scores.numpy(), times.numpy(), 1)
    return found[0].to_dict() if found else None


def hit(top: dict | None, event) -> bool:
    return top is not None and distance_s(top, event.start, event.end) <= TOLERANCE_S


def timed_answer(engine, encoded, queries, evidence: bool):
    """(token lists, {query index: Relevance}, seconds, seconds of the "evidence" stage)."""
    engine.options.evidence = evidence
    before = engine.recorder.timings().get("evidence", 0.0)
    relevance = {}
    t0 = time.perf_counter()
    tokens = engine.answer(encoded, queries, on_evidence=relevance.__setitem__)
    seconds = time.perf_counter() - t0
    return tokens, relevance, seconds, engine.recorder.timings().get("evidence", 0.0) - before


def localise(engine, lengths, count, asked_when, seed, layers, default, timed: int, save) -> list[dict]:
    from vidmini.engine.engine import Query

    chosen = [layers.index(i) for i in default]
    rows = []
    for length, n_when in zip(lengths, asked_when):
        background, found = needles(length, count, n_when, seed)
        questions = list(dict.fromkeys(qa.question for nd in found for qa in nd.questions))
        times = np.arange(length, dtype=np.float64) + 0.5  # 1 fps, the middle of each second
        t0 = time.perf_counter()
        base = engine.encode(batches(background, times, engine.geometry), length, [Query(q) for q in questions])
        encode_s = time.perf_counter() - t0
        print(f"{length} s: background encoded with {len(questions)} questions in {encode_s:.0f} s", flush=True)
        for nd in found:
            queries = [Query(qa.question) for qa in nd.questions]
            encoded = with_needle(engine, base, background, nd, times, [Query(q) for q in questions])
            cost = {}
            if length == max(lengths) and nd.k < timed:  # the same answers without evidence first, timed
                plain, _, without_s, _ = timed_answer(engine, encoded, queries, evidence=False)
                cost = {"answer_without_s": round(without_s, 2)}
            tokens, relevance, answer_s, evidence_s = timed_answer(engine, encoded, queries, evidence=True)
            if cost:
                cost.update(answer_with_s=round(answer_s, 2), evidence_stage_s=round(evidence_s, 3),
                            same_answers=plain == tokens, encode_s_per_frame=round(encode_s / length, 4))
                cost["overhead_of_answering"] = round(answer_s / without_s - 1, 4)
                cost["overhead_of_total"] = round((answer_s - without_s) / (encode_s + without_s), 4)
                print(json.dumps(cost), flush=True)
            event = nd.timeline.events[0]
            for i, qa in enumerate(nd.questions):
                text, rel = engine.decode_text(tokens[i]), relevance[i]
                top = top_moment(rel.scores(chosen), rel.times)
                raw = top_moment(rel.answer[chosen].mean(0), rel.times)  # without the baseline, for comparison
                row = {"length_s": length, "k": nd.k, "kind": event.item.kind, "question_kind": qa.kind,
                       "item": event.item.describe(), "needle_s": [round(event.start, 1), round(event.end, 1)],
                       "question": qa.question, "expected": qa.answer, "answer": text, "right": qa.check(text),
                       "top": top, "distance_s": round(distance_s(top, event.start, event.end), 1) if top else None,
                       "hit": hit(top, event), "hit_raw_attention": hit(raw, event),
                       "answer_s": round(answer_s, 1), **({"cost": cost} if cost and i == 0 else {})}
                if len(layers) > len(default):
                    row["hit_by_layer"] = [hit(top_moment(rel.scores([j]), rel.times), event)
                                           for j in range(len(layers))]
                print(json.dumps({k: v for k, v in row.items() if k != "hit_by_layer"}), flush=True)
                rows.append(row)
            save(rows)  # after every needle: an interrupted run keeps what it measured
    return rows



def cost(model, tokenizer, length: int, seed: int, work: str) -> dict:
    """One real needle file through run_ask: without, with, without --evidence."""
    from vidmini.jobs.ask import Sampling, run_ask
    from vidmini.demo.video import write_video

    _, found = needles(length, 1, 0, seed + 1)
    nd = found[0]
    path = os.path.join(work, f"needle_{length}.mp4")
    write_video(nd.timeline, path, fps=1.0, width=SIZE, height=SIZE, crf=26)
    runs = []
    for evidence in (0, 3, 0):
        t0 = time.perf_counter()
        out = run_ask(model, tokenizer, path, [nd.questions[0].question], model_name="demo", sampling=Sampling(),
                      max_new_tokens=16, use_cache=False, progress=False, evidence=evidence)
        runs.append({"evidence": evidence, "seconds": round(time.perf_counter() - t0, 2), "answer": out["answers"][0],
                     "timings_s": out["timings_s"]})
        print(json.dumps(runs[-1]), flush=True)
    without = (runs[0]["seconds"] + runs[2]["seconds"]) / 2
    event = nd.timeline.events[0]
    found = runs[1]["answer"]["evidence"]
    return {"length_s": length, "frames": length, "needle_s": [round(event.start, 1), round(event.end, 1)],
            "runs": runs, "same_answers": len({r["answer"]["answer"] for r in runs}) == 1,
            "top_within_3s": hit(found[0] if found else None, event),
            "overhead": round((runs[1]["seconds"] - without) / without, 4),
            "evidence_stage_s": runs[1]["timings_s"].get("evidence")}


def rate(rows, key: str) -> dict:
    rows = list(rows)
    hits = sum(r[key] for r in rows)
    return {"hits": hits, "of": len(rows), "rate": round(hits / max(1, len(rows)), 3)}


def summarize(rows: list[dict], lengths: list[int], depth: int) -> dict:
    """Hit rates of the needle questions (overall, by length, by kind) and, apart, of the "when" questions."""
    needle = [r for r in rows if r["question_kind"] != "when"]
    timing = [r for r in rows if r["question_kind"] == "when"]
    out = {"needles": {"top_moment_within_3s": rate(needle, "hit"), "answer_right": rate(needle, "right"),
                       "raw_attention_top_within_3s": rate(needle, "hit_raw_attention")},
           "by_length": {str(n): {"top_moment_within_3s": rate((r for r in needle if r["length_s"] == n), "hit"),
                                  "answer_right": rate((r for r in needle if r["length_s"] == n), "right")}
                         for n in lengths},
           "by_kind": {k: rate((r for r in needle if r["kind"] == k), "hit") for k in KINDS},
           "when_questions": {"top_moment_within_3s": rate(timing, "hit"), "answer_right": rate(timing, "right")}}
    costs = [r["cost"] for r in rows if "cost" in r]
    if costs:
        out["cost"] = {"runs": len(costs), "same_answers": all(c["same_answers"] for c in costs),
                       "evidence_stage_s": max(c["evidence_stage_s"] for c in costs),
                       **{k: round(sum(c[k] for c in costs) / len(costs), 4)
                          for k in ("overhead_of_answering", "overhead_of_total")}}
    if depth:
        out["hit_rate_by_layer"] = [round(sum(r["hit_by_layer"][j] for r in needle) / max(1, len(needle)), 3)
                                    for j in range(depth)]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="600,3600", help="video lengths in seconds")
    parser.add_argument("--count", type=int, default=10, help="needle videos per length")
    parser.add_argument("--when", default="10,3", help="per length, how many needles also get a 'when' question")
    parser.add_argument("--timed", type=int, default=2, help="needles of the longest length also answered without")
    parser.add_argument("--cost", action="store_true", help="time one real file of the longest length with/without")
    parser.add_argument("--all-layers", action="store_true", help="score every LLM layer alone too")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seed", type=int, default=700)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench/results/evidence"))
    args = parser.parse_args(argv)

    import torch

    from vidmini.engine.engine import Engine, EngineOptions
    from vidmini.families.loading import LoadOptions, load_model
    from vidmini.engine.relevance import evidence_layers

    threads = int(os.environ.get("VIDMINI_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    model, tokenizer = load_model(LoadOptions(model=args.model, device="cpu"))
    depth = len(model.get_decoder().layers)
    default = evidence_layers(depth)
    layers = tuple(range(depth)) if args.all_layers else tuple(default)
    engine = Engine(model, tokenizer, EngineOptions(max_new_tokens=args.max_new_tokens, evidence=True,
                                                    evidence_layers=layers))
    lengths = [int(x) for x in args.lengths.split(",") if x]
    asked_when = [int(x) for x in args.when.split(",")] + [0] * len(lengths)
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch_threads": threads},
              "model": args.model, "seed": args.seed, "layers": list(default), "tolerance_s": TOLERANCE_S,
              "command": "python bench/evidence.py " + " ".join(sys.argv[1:] if argv is None else argv)}

    def save(rows: list[dict]) -> None:
        report["summary"] = summarize(rows, lengths, depth if args.all_layers else 0)
        report["needles"] = rows
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(report, indent=1))

    rows = localise(engine, lengths, args.count, asked_when, args.seed, layers, default, args.timed, save) \
        if args.count else []
    save(rows)
    if args.cost:
        with tempfile.TemporaryDirectory() as work:
            report["cost"] = cost(model, tokenizer, max(lengths), args.seed, work)
    save(rows)
    print(json.dumps({k: report[k] for k in ("summary", "cost") if k in report}, indent=1))


if __name__ == "__main__":
    main()
