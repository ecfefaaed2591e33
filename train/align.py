"""Stage 2: projector + pre-fusion (+ the vision side, gently) through the frozen LLM, on questions and answers.

The loss is the LLM's next-token loss on the answer ("blue<|im_end|>") after the prompt exactly as the engine
builds it: [fused prompt before <image> | one token per frame | fused prompt after]. All questions about a clip
share one pre-fusion pass, as in the engine. Clip mix: still clips (1-3 frames, what is on screen), needle clips
(8-32 frames of backgrounds with one item for >= 3 s), sequences (first / last / how many / when).

    python -m train.align --steps 600 --vision train/runs/vision/last.pt [--out train/runs/align]   # resumes
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.common import LossLog, load, produced, save, setup_threads
from train.data import HEADS, frame_labels, render_clip
from train.model import build_model, export, ours
from vidmini.demo.clips import needle_video, sequence_clip, still_clip
from vidmini.demo.questions import SINGLE_EVENT, TEMPORAL, ask, needle_question
from vidmini.model.prefusion import IMAGE_TOKEN_INDEX, FusionLayout
from vidmini.model.preprocess import normalize, pixel_stats
from vidmini.model.prompt import build_prompt_ids


def sample(rng: random.Random, mix: dict[str, float]):
    """(timeline, frame times at 1 fps, questions) of one training clip."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "still":
        duration = rng.choice([1, 1, 2, 3])
        tl = still_clip(rng, float(duration))
        qas = {}
        for _ in range(4):
            qa = ask(tl, rng, SINGLE_EVENT)
            if qa is not None:
                qas.setdefault(qa.kind, qa)
        return kind, tl, list(qas.values())[:3]
    if kind == "needle":
        duration = rng.randint(8, 24)
        tl = needle_video(rng, float(duration), rng.uniform(0, duration), rng.uniform(3.0, 6.0),
                          scene_s=(4.0, 30.0))
        return kind, tl, [needle_question(tl, rng)]
    duration = rng.randint(16, 30)
    tl = sequence_clip(rng, float(duration))
    qas = [qa for qa in (ask(tl, rng, TEMPORAL), ask(tl, rng, SINGLE_EVENT)) if qa is not None]
    return kind, tl, qas


def training_clip(seed: int, mix: dict[str, float], at: tuple[int, int]):
    """(kind, timeline, questions, frame times at 1 fps, frames [T, 336, 336, 3], frames for the attribute loss)
    of clip k of step s: a function of (seed, s, k) only, so a resumed run sees the same clips."""
    step, k = at
    rng = random.Random(seed * 1_000_003 + step * 97 + k)
    kind, tl, qas = sample(rng, mix)
    times = [i + 0.5 for i in range(int(tl.duration))]
    if not qas:
        return kind, tl, qas, times, None, []
    frames = render_clip(tl, times, rng)
    pick = sorted(rng.sample(range(len(frames)), min(4, len(frames))))  # a few frames are enough
    return kind, tl, qas, times, frames, pick


def aux_loss(model, heads, pixels: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stage 1's per-frame attribute loss, kept on so the vision side keeps learning what is on screen."""
    token = model.model.compressor(model.model.vision_tower(pixels))[:, 0]  # [T, Dv]
    return sum(F.cross_entropy(heads[k](token), labels[k]) for k in HEADS)


class PrefixCache:
    """The LLM's keys and values for the prompt before <image> (system prompt + user header), computed once from
    the raw embeddings. Training then runs the LLM over [frames | question | answer] only, about a third of the
    tokens; in exchange pre-fusion is asked (keep loss) to leave those prefix tokens as they are, so that the
    engine's fused prefix matches what training saw."""

    def __init__(self, model, ids: list[int]):
        self.ids = torch.tensor(ids)
        with torch.no_grad():
            out = model.model(inputs_embeds=model.model.embed_tokens(self.ids)[None], use_cache=True)
        cache = out.past_key_values
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]  # each [1, kv_heads, P, d]

    def __len__(self) -> int:
        return len(self.ids)

    def expand(self, batch: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous(), i)
        return cache


def word_targets(model, tokenizer, tl, times: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the mean LLM embedding of the words that name what is on screen ("blue", "circle", "7",
    "HOUSE"), and which frames show anything: [T, H], [T] bool."""
    embed = model.model.embed_tokens
    out, shown = [], []
    for t in times:
        ids = []
        for e in tl.visible(t):
            ids += tokenizer(e.item.colour).input_ids + tokenizer(e.item.value).input_ids
        shown.append(bool(ids))
        out.append(embed(torch.tensor(ids)).mean(0) if ids else torch.zeros(embed.weight.shape[1]))
    return torch.stack(out).detach(), torch.tensor(shown)


def clip_loss(model, tokenizer, frames: np.ndarray, qas, table, prefix: PrefixCache, words=None
              ) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """(mean answer loss, keep loss, whether each greedy answer was right (teacher forced, a cheap running
    accuracy)) for the clip's questions, all sharing one pre-fusion pass and one batched LLM pass."""
    prompts = [build_prompt_ids(tokenizer, qa.question) for qa in qas]
    layout = FusionLayout.build(prompts)
    vision, compressed = model.encode_frames(normalize(torch.from_numpy(frames), table))  # [T,64,H], [T,1,H]
    frame_tokens, text = model.fuse(vision, compressed, layout)  # [T, 1, H], [T, S_text, H]
    text_mean = text.float().mean(0)  # [S_text, H], as the engine's fp32 sum / count
    embed = model.model.embed_tokens
    P = len(prefix)
    keep = 0.0
    if words is not None and words[1].any():
        # Frame tokens that look like the words for what they show: the frozen LLM already knows how to copy a
        # word from its context into an answer, so this is the shortest road from pixels to a right answer.
        target, shown = words
        cos = F.cosine_similarity(frame_tokens[:, 0][shown], target[shown], dim=-1)  # [T_shown]
        keep = keep + args_word_weight * (1 - cos).mean()
    seqs, targets = [], []
    for i, qa in enumerate(qas):
        prompt = model.fused_prompt(layout, i, text_mean)  # [L, H]
        assert prompts[i].index(IMAGE_TOKEN_INDEX) == P and prompts[i][:P] == prefix.ids.tolist()
        raw = embed(prefix.ids)  # [P, H]
        keep = keep + ((prompt[:P] - raw) ** 2).mean() / (raw**2).mean() / len(qas)
        target = torch.tensor(tokenizer(qa.answer + "<|im_end|>").input_ids)  # [A]
        seqs.append(torch.cat([frame_tokens.flatten(0, 1), prompt[P + 1 :], embed(target[:-1])]))  # [N_i, H]
        targets.append(target)
    longest = max(len(x) for x in seqs)
    x = torch.stack([F.pad(x, (0, 0, 0, longest - len(x))) for x in seqs])  # [B, N, H]; padding at the end only
    positions = torch.arange(P, P + longest)[None].expand(len(seqs), -1)  # [B, N]
    hidden = model.model(inputs_embeds=x, cache=prefix.expand(len(seqs)), position_ids=positions,
                         use_cache=True).last_hidden_state  # [B, N, H]
    total, right = 0.0, []
    for i, (seq, target) in enumerate(zip(seqs, targets)):
        logits = model.lm_head(hidden[i, len(seq) - len(target) : len(seq)])  # [A, V]
        total = total + F.cross_entropy(logits, target)
        right.append(bool((logits.argmax(-1) == target).all()))
    return total / len(qas), keep, right


args_word_weight = 1.0


def param_groups(model, lr: float) -> list[dict]:
    m = model.model
    return [
        {"params": list(m.mm_projector.parameters()), "lr": lr},
        {"params": list(m.prefusion_layers.parameters()), "lr": lr * 0.3},
        {"params": [p for p in list(m.vision_tower.parameters()) + list(m.compressor.parameters()) if p.requires_grad],
         "lr": lr * 0.2},
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--accumulate", type=int, default=4, help="clips per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision", default="train/runs/vision/last.pt")
    parser.add_argument("--out", default="train/runs/align")
    parser.add_argument("--export", default="vidmini/demo/weights", help="folder written at every checkpoint")
    parser.add_argument("--mix", default="still=0.75,needle=0.2,sequence=0.05")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (0: in the trainer)")
    parser.add_argument("--seed", type=int, default=2000)  # training seeds: 1000+; evaluation uses < 1000
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--follow", default=None, metavar="STAGE1_CKPT",
                        help="stage 1 is still training: keep the vision side frozen and reload it from this file at "
                             "every checkpoint (both stages then run at once on a shared machine)")
    parser.add_argument("--words", type=float, default=1.0, help="weight of the word-embedding target of frame tokens")
    parser.add_argument("--keep", type=float, default=1.0, help="weight of the keep loss (see PrefixCache)")
    parser.add_argument("--aux", type=float, default=0.3, help="weight of stage 1's per-frame attribute loss")
    args = parser.parse_args(argv)
    setup_threads()
    global args_word_weight
    args_word_weight = args.words
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    from transformers import AutoTokenizer

    from vidmini.demo.checkpoint import prepare_llm_cache

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_llm_cache()))
    model = build_model()
    for p in model.parameters():
        p.requires_grad_(False)
    for name, p in model.named_parameters():
        if name.startswith(("model.vision_tower.", "model.compressor.", "model.mm_projector.", "model.prefusion_layers.")):
            p.requires_grad_("pos_embed" not in name and "patch_embedding" not in name)  # fixed (train/vision.py)
    out = Path(args.out)
    state = load(out / "last.pt")
    step = 0
    stage1 = load(Path(args.vision))["model"]
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(model.config.mm_hidden_size, n) for k, n in HEADS.items()})
    heads.load_state_dict({k[len("heads."):]: v for k, v in stage1.items() if k.startswith("heads.")})
    if state is None:
        mapped = {f"model.{k}": v for k, v in stage1.items() if k.startswith(("vision_tower.", "compressor."))}
        missing = model.load_state_dict(mapped, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
    else:
        model.load_state_dict(state["ours"], strict=False)
        if not state.get("followed"):
            heads.load_state_dict(state["heads"])
        else:  # the vision side was stage 1's until now: take its latest, with its heads
            model.load_state_dict({f"model.{k}": v for k, v in stage1.items()
                                   if k.startswith(("vision_tower.", "compressor."))}, strict=False)
        step = state["step"]
        print(f"resumed at step {step}")
    if args.follow:
        for p in list(model.model.vision_tower.parameters()) + list(model.model.compressor.parameters()):
            p.requires_grad_(False)
    groups = param_groups(model, args.lr) + [{"params": list(heads.parameters()), "lr": args.lr * 0.2}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]
    if state is not None and bool(state.get("followed")) == bool(args.follow):  # else the groups differ: fresh moments
        opt.load_state_dict(state["opt"])
    model.train()
    table = pixel_stats(model.config.image_mean, model.config.image_std)
    log = LossLog(out / "log.jsonl")
    losses, keeps, hits = [], [], {}
    prefix_ids = build_prompt_ids(tokenizer, "?")
    prefix = PrefixCache(model, prefix_ids[: prefix_ids.index(IMAGE_TOKEN_INDEX)])
    make = functools.partial(training_clip, args.seed, mix)
    clips = produced(make, ((s, k) for s in range(step, args.steps) for k in range(args.accumulate)), args.workers)
    while step < args.steps:
        scale = min(1.0, (step + 1) / 30) * (0.15 + 0.85 * (1 - step / args.steps))
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * scale
        t0 = time.monotonic()
        opt.zero_grad()
        for k in range(args.accumulate):
            kind, tl, qas, times, frames, pick = next(clips)
            if not qas:
                continue
            words = word_targets(model, tokenizer, tl, times) if args.words > 0 else None
            loss, keep, right = clip_loss(model, tokenizer, frames, qas, table, prefix, words)
            labels = {k: torch.tensor([frame_labels(tl, times[i])[k] for i in pick]) for k in HEADS}
            aux = torch.zeros(()) if args.follow else \
                aux_loss(model, heads, normalize(torch.from_numpy(frames[pick]), table), labels)
            ((loss + args.keep * keep + args.aux * aux) / args.accumulate).backward()
            keeps.append(keep.item())
            losses.append(loss.item())
            for qa, ok in zip(qas, right):
                hits.setdefault(qa.kind if kind != "needle" else "needle", []).append(ok)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log.write(step=step, loss=round(sum(losses) / max(1, len(losses)), 4),
                      keep=round(sum(keeps) / max(1, len(keeps)), 4), step_s=round(time.monotonic() - t0, 1),
                      acc={k: round(sum(v[-30:]) / len(v[-30:]), 2) for k, v in sorted(hits.items())})
            losses.clear()
            keeps.clear()
        if step % args.save_every == 0 or step == args.steps:
            save(out / "last.pt", ours=ours(model), heads=heads.state_dict(), opt=opt.state_dict(), step=step,
                 followed=bool(args.follow))
            if args.follow and (latest := load(Path(args.follow))):
                model.load_state_dict({f"model.{k}": v for k, v in latest["model"].items()
                                       if k.startswith(("vision_tower.", "compressor."))}, strict=False)
            if args.export:
                export(model, Path(args.export))


if __name__ == "__main__":
    main()
