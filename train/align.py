"""Stage 2: the projector and pre-fusion, through the frozen LLM, on questions about clips of 1 to 1,000+ frames.

The loss is the LLM's next-token loss on the reply ("<|im_start|>assistant\\nblue<|im_end|>": SmolLM2 writes its
own role header, the engine strips it) after the prompt exactly as the engine builds it: [fused prompt before
<image> | one token per frame | fused prompt after]. All questions about a clip share one pre-fusion pass, as in
the engine. The vision side (stage 1) is frozen; clips are assembled from stage 1's labelled pool frames
(train/clips.py), so only a clip's distinct frames are encoded and fused, and the pre-fusion text average is
weighted by how many positions each distinct frame fills, exactly the engine's average over every frame.

Curriculum: needle clips grow from 12 frames to `--longest` over the first 70% of the steps, so that one item
among many background frames is found and named at the lengths the product is asked about.

    python -m train.align --steps 800 --vision train/runs/vision/last.pt [--out train/runs/align]   # resumes
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.clips import Catalogue, Clip, needle_length
from train.common import LossLog, load, save, setup_threads
from train.model import build_model, export, ours
from vidmini.demo.config import DemoSize
from vidmini.families.llava_mini.prefusion import IMAGE_TOKEN_INDEX, FusionLayout
from vidmini.inputs.preprocess import normalize, pixel_stats
from vidmini.families.llava_mini.prompt import build_prompt_ids

REPLY_HEADER = "<|im_start|>assistant\n"


class PrefixCache:
    """The LLM's keys and values for the prompt before <image> (system prompt + user header), computed once from
    the raw embeddings. Training then runs the LLM over [frames | question | answer] only; in exchange pre-fusion
    is asked (keep loss) to leave those prefix tokens as they are, so that the engine's fused prefix matches what
    training saw."""

    def __init__(self, model, ids: list[int], track: bool = False):
        """track: keep the graph (the LLM's adapters train, and the prefix's keys and values move with them)."""
        self.ids = torch.tensor(ids)
        with torch.enable_grad() if track else torch.no_grad():
            out = model.model(inputs_embeds=model.model.embed_tokens(self.ids)[None], use_cache=True)
        self.layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]  # [1, kv, P, d] each

    def __len__(self) -> int:
        return len(self.ids)

    def expand(self, batch: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous(), i)
        return cache


class Pool:
    """Stage 1's pool frames (pooled to the tower's input size) and what each shows."""

    def __init__(self, folder: Path, shards: int, kinds: dict[str, float] | None = None, count_share: float = 0.3):
        names = sorted(folder.glob("shard-*.npz"))[:shards]
        if not names:
            raise SystemExit(f"no shards in {folder}: run python -m train.pool first")
        frames, heads = [], []
        for name in names:
            with np.load(name) as z:
                frames.append(z["frames"])
                heads.append(z["heads"])
        self.frames = np.concatenate(frames)  # [N, 168, 168, 3] uint8
        self.catalogue = Catalogue(np.concatenate(heads), kinds, count_share)


def encode_distinct(model, pool: Pool, clip: Clip, table: torch.Tensor):
    """(vision [U, 49, H], compressed [U, 1, H], position -> distinct index [L], weight of each distinct [U])."""
    distinct, where = np.unique(np.array(clip.frames), return_inverse=True)
    pooled = normalize(torch.from_numpy(pool.frames[distinct]), table)  # [U, 3, 168, 168]
    m = model.model
    with torch.no_grad():  # the vision side is stage 1's, frozen
        cells = m.vision_tower.forward_pooled(pooled)  # [U, 49, Dv]
        compressed = m.compressor(cells)  # [U, 1, Dv]
    weight = torch.from_numpy(np.bincount(where, minlength=len(distinct)) / len(where)).float()  # [U]
    return m.mm_projector(cells), m.mm_projector(compressed), torch.from_numpy(where), distinct, weight


def word_target(model, tokenizer, names: list[str]) -> torch.Tensor:
    ids = [i for name in names for i in tokenizer(name).input_ids]
    return model.model.embed_tokens(torch.tensor(ids)).mean(0).detach()  # [H]


def clip_loss(model, tokenizer, pool: Pool, clip: Clip, table, prefix: PrefixCache, word_weight: float):
    """(reply loss, keep + word loss, whether each reply was right, teacher forced) for one clip's questions,
    sharing one pre-fusion pass and one batched LLM pass."""
    prompts = [build_prompt_ids(tokenizer, qa.question) for qa in clip.questions]
    layout = FusionLayout.build(prompts)
    vision, compressed, where, distinct, weight = encode_distinct(model, pool, clip, table)
    frame_tokens, text = model.fuse(vision, compressed, layout)  # [U, 1, H], [U, S_text, H]
    text_mean = (text.float() * weight[:, None, None]).sum(0)  # [S_text, H]: the engine's mean over all frames
    embed = model.model.embed_tokens
    aux = torch.zeros(())
    shown = [k for k, i in enumerate(distinct) if pool.catalogue.seen[i].count > 0]
    if word_weight > 0 and shown:
        # frame tokens that look like the words naming what they show: the frozen LLM already copies words from
        # its context into an answer
        targets = torch.stack([word_target(model, tokenizer, pool.catalogue.seen[distinct[k]].names()) for k in shown])
        aux = aux + word_weight * (1 - F.cosine_similarity(frame_tokens[shown, 0], targets, dim=-1)).mean()
    P = len(prefix)
    raw = embed(prefix.ids)  # [P, H]
    sequence = frame_tokens[:, 0][where]  # [L, H]
    seqs, targets = [], []
    for i, qa in enumerate(clip.questions):
        prompt = model.fused_prompt(layout, i, text_mean)  # [L_i, H]
        assert prompts[i].index(IMAGE_TOKEN_INDEX) == P and prompts[i][:P] == prefix.ids.tolist()
        aux = aux + ((prompt[:P] - raw) ** 2).mean() / (raw**2).mean() / len(clip.questions)
        target = torch.tensor(tokenizer(REPLY_HEADER + qa.answer + "<|im_end|>").input_ids)  # [A]
        seqs.append(torch.cat([sequence, prompt[P + 1 :], embed(target[:-1])]))  # [N_i, H]
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
    return total / len(clip.questions), aux, right


def make_clip(catalogue: Catalogue, seed: int, step: int, k: int, steps: int, longest: int, mix: dict) -> Clip:
    """Clip k of step `step`: a function of (seed, step, k), so a resumed run sees the same clips."""
    rng = random.Random(seed * 1_000_003 + step * 97 + k)
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    reach = int(12 + (longest - 12) * min(1.0, step / (0.7 * steps)))  # the curriculum's longest clip now
    if kind == "still":
        return catalogue.still(rng)
    if kind == "needle":
        return catalogue.needle(rng, needle_length(rng, reach))
    return catalogue.sequence(rng, min(reach, rng.randint(16, 60)))


def progress(step: int, args) -> float:
    """Where `step` is on the lr's cosine, 0 at --cosine-from, 1 at --steps."""
    return (step - args.cosine_from) / max(1, args.steps - args.cosine_from)


def weights(text: str) -> dict[str, float]:
    """"name=W,name=W" as given to --mix and --kinds."""
    return {k: float(v) for k, v in (p.split("=") for p in text.split(","))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--accumulate", type=int, default=3, help="clips per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision", default="train/runs/vision/last.pt")
    parser.add_argument("--pool", default="train/runs/pool")
    parser.add_argument("--pool-shards", type=int, default=80)
    parser.add_argument("--out", default="train/runs/align")
    parser.add_argument("--export", default="train/runs/export", help="folder written at every checkpoint")
    parser.add_argument("--mix", default="still=0.5,needle=0.38,sequence=0.12")
    parser.add_argument("--kinds", default=None, metavar="shape=W,digit=W,word=W",
                        help="weights of the kind of item a clip is about (default: alike, stills from any frame)")
    parser.add_argument("--count-share", type=float, default=0.3,
                        help="share of sequence clips that also ask how many times an item appears")
    parser.add_argument("--longest", type=int, default=1000, help="the curriculum's longest needle clip (frames)")
    parser.add_argument("--seed", type=int, default=2000)  # training seeds: 1000+; evaluation uses < 1000
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--words", type=float, default=0.5, help="weight of the word-embedding target of frame tokens")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--start-from", default=None, metavar="PT",
                        help="when OUT has no checkpoint yet: our weights from this file (e.g. train/checkpoints/"
                             "align.pt, the last committed stage 2; no optimizer moments), the step counted on")
    parser.add_argument("--adapter-rank", type=int, default=0,
                        help="LoRA on the frozen LLM's q_proj and v_proj (vidmini/families/llava_mini/adapter.py); "
                             "0: none. A run with adapters needs its own --out (its optimizer has one more group)")
    parser.add_argument("--adapter-lr", type=float, default=5e-4)
    parser.add_argument("--cosine-from", type=int, default=0, metavar="STEP",
                        help="the lr's cosine runs from STEP to --steps (a fine-tune's own full cycle); default 0")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    mix = weights(args.mix)
    from transformers import AutoTokenizer

    from vidmini.demo.checkpoint import prepare_llm_cache

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_llm_cache()))
    model = build_model(DemoSize(adapter_rank=args.adapter_rank))
    # What it is taught is what it reads well: vidmini keeps no more frames than this (capacity.trained_frames).
    model.config.max_video_frames = args.longest
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("model.mm_projector.", "model.prefusion_layers.")) or ".lora_" in name)
    stage1 = load(Path(args.vision))["model"]
    loaded = model.load_state_dict({f"model.{k}": v for k, v in stage1.items()
                                    if k.startswith(("vision_tower.", "compressor."))}, strict=False)
    assert not loaded.unexpected_keys, loaded.unexpected_keys
    m = model.model
    groups = [{"params": list(m.mm_projector.parameters()), "lr": args.lr},
              {"params": list(m.prefusion_layers.parameters()), "lr": args.lr * 0.3}]
    adapters = [p for name, p in m.layers.named_parameters() if ".lora_" in name]
    if adapters:
        groups.append({"params": adapters, "lr": args.adapter_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]
    out = Path(args.out)
    step = 0
    if (state := load(out / "last.pt")) is not None:
        model.load_state_dict(state["ours"], strict=False)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}")
    elif args.start_from:
        state = load(Path(args.start_from))
        model.load_state_dict({k: v.float() for k, v in state["ours"].items()}, strict=False)
        step = state["step"]
        print(f"started from {args.start_from} at step {step}")
    first = step  # the lr warms up again after any resume (a committed start has no optimizer moments)
    model.train()
    kinds = weights(args.kinds) if args.kinds else None
    pool = Pool(Path(args.pool), args.pool_shards, kinds, args.count_share)
    table = pixel_stats(model.config.image_mean, model.config.image_std)
    log = LossLog(out / "log.jsonl")
    losses, auxes, hits = [], [], {}
    prefix_ids = build_prompt_ids(tokenizer, "?")
    prefix = PrefixCache(model, prefix_ids[: prefix_ids.index(IMAGE_TOKEN_INDEX)])
    while step < args.steps:
        scale = min(1.0, (step - first + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress(step, args))))
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * scale
        t0, length = time.monotonic(), 0
        opt.zero_grad()
        for k in range(args.accumulate):
            clip = make_clip(pool.catalogue, args.seed, step, k, args.steps, args.longest, mix)
            if not clip.questions:
                continue
            if adapters:  # the prefix's keys and values depend on the adapters: recomputed, in the graph
                prefix = PrefixCache(model, prefix.ids.tolist(), track=True)
            loss, aux, right = clip_loss(model, tokenizer, pool, clip, table, prefix, args.words)
            ((loss + aux) / args.accumulate).backward()
            losses.append(loss.item())
            auxes.append(float(aux.detach()))
            length = max(length, len(clip.frames))
            for qa, ok in zip(clip.questions, right):
                key = "needle" if clip.kind == "needle" and len(clip.frames) >= 100 else qa.kind
                hits.setdefault(key, []).append(ok)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log.write(step=step, loss=round(sum(losses) / max(1, len(losses)), 4),
                      aux=round(sum(auxes) / max(1, len(auxes)), 4), step_s=round(time.monotonic() - t0, 1),
                      longest=length, acc={k: round(sum(v[-30:]) / len(v[-30:]), 2) for k, v in sorted(hits.items())})
            losses.clear()
            auxes.clear()
        if step % args.save_every == 0 or step == args.steps:
            save(out / "last.pt", ours=ours(model), opt=opt.state_dict(), step=step)
            if args.export:
                export(model, Path(args.export))


if __name__ == "__main__":
    main()
