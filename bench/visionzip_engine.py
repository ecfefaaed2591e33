"""VisionZip through the streaming engine, in one run (`python bench/visionzip.py --engine`):

1. LLaVA-NeXT-Video and LLaVA-OneVision backends: per-frame encode time, per-frame LLM prefill time and tokens per
   frame, with the model's own tokens and with VisionZip at K = 64 and 32; ratios against the model's own tokens
   from the same interleaved rounds.
2. LLaVA-Mini `--prefusion-tokens 64`: per-frame encode time (CLIP + compressor + pre-fusion) against the exact
   path, same rounds; and the agreement of greedy answers at K = 576 (every token: must be 1.00), 288, 144 and 64
   with the exact path's, on the tiny test checkpoint, on the reference fixture
   (`shared/fixtures/llava_mini_tiny_c1`, CLIP tower inside; its given prompt ids) and on the bench model.

Models have random weights and the real per-frame token geometry (CLIP-L/14-336: 577 tokens, pooled to 144 for
NeXT-Video; SigLIP-384/14: 729 tokens, pooled to 196 for OneVision; LLaVA-Mini: 576 patches into pre-fusion) at
scaled-down widths: vision 128 wide, the LLM 512 wide (the 8B model's 1024 : 4096 ratio, so the CLIP : pre-fusion
cost ratio of the real model is kept; depths as the real towers: 24 CLIP layers, 4 pre-fusion layers). Timing is wall
and this process's CPU time (steadier on a shared CPU). No assertion anywhere: a table and JSON.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [REPO / "sample_videos" / "scenes.mp4", REPO / "sample_videos" / "counter.mp4"]
FIXTURE = REPO.parent / "shared" / "fixtures" / "llava_mini_tiny_c1"
QUESTIONS = ["What happens in this video?", "What colours does the screen show?", "How many scenes are there?"]
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=24, num_attention_heads=4, patch_size=14)
TEXT = dict(hidden_size=512, intermediate_size=1792, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
GEOMETRY = {"llava_next_video": 336, "llava_onevision": 384}


def frames_of(video: Path, geometry, count: int) -> np.ndarray:
    from vidmini.inputs.video import StreamOptions, decode_all, make_plan, probe

    info = probe(str(video))
    return decode_all(info, make_plan(info, max_frames=count), StreamOptions(geometry=geometry))[0]  # [T, S, S, 3]


def batch_of(frames: np.ndarray):
    from vidmini.inputs.video import FrameBatch

    return FrameBatch(frames, np.arange(len(frames)) + 0.5, np.arange(len(frames)))


def clock():
    return time.perf_counter(), time.process_time()


def since(start) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


# ---- 1. the other video VLMs -------------------------------------------------------------------------------------
def backend_run(backend, tok, frames) -> dict:
    """Encode every frame into the buffer, then prefill [prefix | frames | video_end | suffix]: per-frame seconds."""
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.engine.generate import new_cache, prefill

    engine = Engine(backend, tok, EngineOptions(batch_size=8, max_new_tokens=1))
    query = Query(QUESTIONS[0])
    start = clock()
    encoded = engine.encode([batch_of(frames)], len(frames), [query])
    encode = since(start)
    prefix, suffix = engine.frames.pieces(encoded, (0, None), len(frames), 0)
    pieces = [prefix, encoded.buffer.frames(), backend.video_end(), suffix]
    start = clock()
    prefill(backend, pieces, new_cache(backend, sum(len(p) for p in pieces) + 1), engine.options.chunk)
    fill = since(start)
    n = len(frames)
    return {"encode": (encode[0] / n, encode[1] / n), "prefill": (fill[0] / n, fill[1] / n),
            "tokens": backend.tokens_per_frame, "llm_positions": sum(len(p) for p in pieces)}


def backends(frame_count: int, repeats: int, budgets: tuple[int, ...]) -> list[dict]:
    from vidmini.families.hf_video.backend import VideoBackend
    from vidmini.testing.tiny_video_vlm import build_model, build_tokenizer, preprocessor_config

    tok = build_tokenizer()
    rows = []
    for family, size in GEOMETRY.items():
        model = build_model(family, tok, text=TEXT, vision=VISION, image_size=size)
        pre = preprocessor_config(family, size)
        variants = {"own": VideoBackend(model, None, tokenizer=tok, preprocessor=pre)}
        for k in budgets:
            variants[f"visionzip {k}"] = VideoBackend(model, k, tokenizer=tok, preprocessor=pre)
        frames = frames_of(SAMPLES[0], variants["own"].geometry, frame_count)
        runs = {name: [] for name in variants}
        for round_ in range(repeats + 1):  # round 0 warms up
            for name, backend in variants.items():
                result = backend_run(backend, tok, frames)
                if round_:
                    runs[name].append(result)
        own = None
        for name, results in runs.items():
            row = {"model": family, "path": name, "tokens_per_frame": results[0]["tokens"],
                   "llm_positions": results[0]["llm_positions"], "frames": frame_count}
            for stage in ("encode", "prefill"):
                row[f"{stage}_s_per_frame"] = statistics.median(r[stage][0] for r in results)
                row[f"{stage}_cpu_s_per_frame"] = statistics.median(r[stage][1] for r in results)
            row["total_s_per_frame"] = row["encode_s_per_frame"] + row["prefill_s_per_frame"]
            row["total_cpu_s_per_frame"] = row["encode_cpu_s_per_frame"] + row["prefill_cpu_s_per_frame"]
            own = own or row
            for key in ("encode_cpu_s_per_frame", "prefill_cpu_s_per_frame", "total_cpu_s_per_frame",
                        "total_s_per_frame"):
                row[f"speedup_{key}"] = own[key] / row[key]
            rows.append(row)
    return rows


# ---- 2. LLaVA-Mini --prefusion-tokens ------------------------------------------------------------------------------
def mini_encode_time(model, tok, frames, prefusion_tokens) -> tuple[float, float]:
    from vidmini.engine.engine import Engine, EngineOptions, Query

    engine = Engine(model, tok, EngineOptions(batch_size=8, max_new_tokens=1, prefusion_tokens=prefusion_tokens))
    start = clock()
    engine.encode([batch_of(frames)], len(frames), [Query(QUESTIONS[0])])
    wall, cpu = since(start)
    return wall / len(frames), cpu / len(frames)


def mini_speed(model, tok, frame_count: int, repeats: int, k: int) -> dict:
    from vidmini.inputs.video.frames import FrameGeometry

    frames = frames_of(SAMPLES[0], FrameGeometry(), frame_count)
    runs = {"exact": [], f"prefusion {k}": []}
    for round_ in range(repeats + 1):
        for name, tokens in (("exact", None), (f"prefusion {k}", k)):
            t = mini_encode_time(model, tok, frames, tokens)
            if round_:
                runs[name].append(t)
    out = {name: {"encode_s_per_frame": statistics.median(r[0] for r in rs),
                  "encode_cpu_s_per_frame": statistics.median(r[1] for r in rs)} for name, rs in runs.items()}
    exact, reduced = out["exact"], out[f"prefusion {k}"]
    out["speedup_wall"] = exact["encode_s_per_frame"] / reduced["encode_s_per_frame"]
    out["speedup_cpu"] = exact["encode_cpu_s_per_frame"] / reduced["encode_cpu_s_per_frame"]
    return out


def greedy_answers(model, tok, frames, questions, prefusion_tokens, max_new, ids=None) -> list[list[int]]:
    from vidmini.engine.engine import Engine, EngineOptions, Query

    engine = Engine(model, tok, EngineOptions(batch_size=8, max_new_tokens=max_new, prefusion_tokens=prefusion_tokens))
    if ids is not None:  # the fixture has no tokenizer: its prompt ids are given
        engine.frames.prompt_ids = lambda question: list(ids)
    queries = [Query(q) for q in questions]
    encoded = engine.encode([batch_of(frames)], len(frames), queries)
    return engine.answer(encoded, queries)


def agreement(pairs: list[tuple[list[int], list[int]]], max_new: int) -> dict:
    """Greedy answers of the reduced path against the exact path's, position by position."""
    same_answer = sum(a == b for a, b in pairs)
    same_first = sum(a[:1] == b[:1] for a, b in pairs)
    positions = sum(sum(x == y for x, y in zip(a, b)) for a, b in pairs)
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in pairs]
    return {"answers": len(pairs), "identical_answers": same_answer, "first_token_agreement": same_first / len(pairs),
            "token_agreement": positions / (len(pairs) * max_new),
            "mean_common_prefix_tokens": statistics.mean(prefix), "max_new_tokens": max_new}


def mini_agreement(name, model, tok, inputs, questions, budgets, max_new: int, ids=None) -> list[dict]:
    pairs = {k: [] for k in budgets}
    for frames in inputs:
        exact = greedy_answers(model, tok, frames, questions, None, max_new, ids)
        for k in budgets:
            pairs[k] += list(zip(greedy_answers(model, tok, frames, questions, k, max_new, ids), exact))
    return [{"model": name, "prefusion_tokens": k, **agreement(p, max_new)} for k, p in pairs.items()]


def llava_mini(frame_count: int, repeats: int, k: int, max_new: int, agreement_frames: int) -> dict:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import vidmini  # noqa: F401  registers LLaVA-Mini with transformers
    from vidmini.testing.tiny_checkpoint import build_model, build_tokenizer
    from vidmini.inputs.video.frames import FrameGeometry

    tok = build_tokenizer()
    vision = dict(model_type="clip_vision_model", image_size=336, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                  num_channels=3, **VISION)
    bench_model = build_model("small", vocab_size=len(tok), vision_config=vision, mm_hidden_size=VISION["hidden_size"],
                              compressor_dim=VISION["hidden_size"], prefusion_layer_num=4, **TEXT)
    speed = mini_speed(bench_model, tok, frame_count, repeats, k)
    videos = [frames_of(v, FrameGeometry(), agreement_frames) for v in SAMPLES]
    tiny = build_model("tiny", vocab_size=len(tok))
    budgets = (576, 288, 144, k)  # 576 keeps every token: the exact path, a check of the comparison itself
    rows = [*mini_agreement("tiny model (random, 24x24 patches)", tiny, tok, videos, QUESTIONS, budgets, max_new),
            *mini_agreement("bench model (random)", bench_model, tok, videos, QUESTIONS, budgets, max_new)]
    if FIXTURE.exists():
        io = np.load(FIXTURE / "reference_io.npz")
        hf_logging.disable_progress_bar()
        fixture = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32)
        inputs = [io["video_uint8"], io["image_uint8"][None], *videos]
        rows += mini_agreement("reference fixture llava_mini_tiny_c1", fixture, None, inputs, ["q"], budgets, max_new,
                               ids=io["input_ids"].tolist())
    return {"speed": speed, "agreement": rows}


def run(args) -> tuple[dict, list[str]]:
    rows = backends(args.engine_frames, args.repeats, (64, 32))
    mini = llava_mini(args.engine_frames, args.repeats, 64, args.max_new_tokens, args.agreement_frames)
    lines = ["Per frame, through the engine (encode into the token buffer; LLM prefill of the whole sequence), "
             f"{args.engine_frames} frames, median of {args.repeats} interleaved rounds",
             "| model | path | tokens/frame | encode s/frame (CPU) | prefill s/frame (CPU) | total CPU s/frame | "
             "vs own (CPU) | total wall s/frame | vs own (wall) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['path']} | {r['tokens_per_frame']} | {r['encode_cpu_s_per_frame']:.4f} | "
                     f"{r['prefill_cpu_s_per_frame']:.4f} | {r['total_cpu_s_per_frame']:.4f} | "
                     f"{r['speedup_total_cpu_s_per_frame']:.2f}x | {r['total_s_per_frame']:.4f} | "
                     f"{r['speedup_total_s_per_frame']:.2f}x |")
    s = mini["speed"]
    lines += ["", "LLaVA-Mini encode per frame (CLIP + compressor + pre-fusion), bench model, same rounds",
              "| path | wall s/frame | CPU s/frame |", "|---|---|---|"]
    for name in ("exact", "prefusion 64"):
        lines.append(f"| {name} | {s[name]['encode_s_per_frame']:.4f} | {s[name]['encode_cpu_s_per_frame']:.4f} |")
    lines.append(f"speed-up of --prefusion-tokens 64: {s['speedup_wall']:.2f}x wall, {s['speedup_cpu']:.2f}x CPU")
    lines += ["", f"Agreement of --prefusion-tokens K greedy answers with the exact path ({args.max_new_tokens} new "
              "tokens; K = 576 keeps every token)",
              "| model | K | answers | identical | first token | token agreement | mean common prefix |",
              "|---|---|---|---|---|---|---|"]
    for a in mini["agreement"]:
        lines.append(f"| {a['model']} | {a['prefusion_tokens']} | {a['answers']} | {a['identical_answers']} | "
                     f"{a['first_token_agreement']:.2f} "
                     f"| {a['token_agreement']:.2f} | {a['mean_common_prefix_tokens']:.1f} |")
    return {"backends": rows, "llava_mini": mini, "vision_dims": VISION, "text_dims": TEXT}, lines
