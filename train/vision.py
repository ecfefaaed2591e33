"""Stage 1: the ViT and the compressor, from scratch, on single frames, without the LLM.

Each frame's one compressed token must tell, through small linear heads, the colour of every shape kind on screen,
the digit and its colour, and the word and its colour. That makes the token carry what the questions ask about
before the LLM is involved; stage 2 (train/align.py) then teaches the projector and pre-fusion to say it.

    python -m train.vision --steps 1500 [--out train/runs/vision]     # resumes from OUT/last.pt
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
from torch import nn
from transformers import CLIPVisionConfig

from train.common import LossLog, load, produced, save, setup_threads
from train.data import HEADS, PATCH_KINDS, frame_labels, patch_labels, render_clip
from vidmini.demo.world import COLOUR_NAMES
from vidmini.demo.clips import still_clip
from vidmini.demo.config import DemoSize, vision_config
from vidmini.model.compressor import Compressor
from vidmini.model.config import CLIP_MEAN, CLIP_STD
from vidmini.model.preprocess import normalize, pixel_stats
from vidmini.model.vision import VisionTower


class VisionStage(nn.Module):
    """The demo model's vision_tower + compressor (same module names), and one linear head per label."""

    def __init__(self, size: DemoSize):
        super().__init__()
        self.vision_tower = VisionTower(CLIPVisionConfig.from_dict(vision_config(size)), -1, "patch")
        self.compressor = Compressor(1, size.vision_hidden, size.compressor_heads)
        vm = self.vision_tower.vision_tower.vision_model
        thumbnail_init(vm.embeddings.patch_embedding)
        # Kept fixed: Adam moves each of its 677k weights by ~lr per step whatever its gradient, which scrambled
        # the 1/49 thumbnail weights within a few hundred steps; the layers above learn the features instead.
        vm.embeddings.patch_embedding.weight.requires_grad_(False)
        for layer in vm.encoder.layers:  # start as the identity on the residual stream: features = thumbnails
            nn.init.zeros_(layer.self_attn.out_proj.weight)
            nn.init.zeros_(layer.mlp.fc2.weight)
        nn.init.normal_(self.compressor.query, std=0.02)
        nn.init.xavier_uniform_(self.compressor.attn.in_proj_weight)
        self.heads = nn.ModuleDict({name: nn.Linear(size.vision_hidden, n) for name, n in HEADS.items()})
        # Dense labels: the colour and kind of what lies under each patch. 64 targets per frame instead of 8
        # get a from-scratch ViT off the "predict the prior" plateau (it sat there for 300 steps without them).
        self.patch_colour = nn.Linear(size.vision_hidden, len(COLOUR_NAMES) + 1)
        self.patch_kind = nn.Linear(size.vision_hidden, len(PATCH_KINDS))

    def forward(self, pixels: torch.Tensor):
        patches = self.vision_tower(pixels)  # [B, 64, D]
        token = self.compressor(patches)[:, 0]  # [B, D]
        heads = {name: head(token) for name, head in self.heads.items()}  # each [B, classes]
        # [B, 64, 9], [B, 64, 7], [B, h, 64]
        return heads, self.patch_colour(patches), self.patch_kind(patches), attention(self.compressor, patches)


def attention(compressor: Compressor, patches: torch.Tensor) -> torch.Tensor:
    """The compressor's attention weights [B, heads, N] (recomputed; the module itself only returns its output)."""
    attn = compressor.attn
    B, N, D = patches.shape
    kv = compressor.ln_kv(patches)
    keys = kv + compressor.pos_embed.to(kv.dtype)  # C = 1: the up-sampled table is this one row everywhere
    query = compressor.ln_q(compressor.query) + compressor.pos_embed  # [1, D]
    wq, wk, _ = attn.in_proj_weight.chunk(3)
    bq, bk, _ = attn.in_proj_bias.chunk(3)
    d = D // attn.num_heads
    q = F.linear(query, wq, bq).view(attn.num_heads, d)  # [h, d]
    k = F.linear(keys, wk, bk).view(B, N, attn.num_heads, d)  # [B, N, h, d]
    return torch.softmax(torch.einsum("hd,bnhd->bhn", q, k) / d**0.5, dim=-1)


def dense_loss(logits: torch.Tensor, labels: torch.Tensor, background: float = 0.15) -> torch.Tensor:
    """Cross-entropy per patch, background patches weighted down: ~84% of patches are background, and with equal
    weights the loss was ~all "nothing here" (item-patch identity sat at 15-20% for 300 steps)."""
    labels = labels.flatten()  # [B*N]
    weight = torch.where(labels > 0, 1.0, background)
    return (F.cross_entropy(logits.flatten(0, 1), labels, reduction="none") * weight).sum() / weight.sum()


def attention_target(colours: torch.Tensor) -> torch.Tensor:
    """[B, N] patch colours -> [B, N] where the one token should look: the items' patches, evenly (all patches
    when the frame shows nothing)."""
    fg = (colours > 0).float()
    fg = torch.where(fg.sum(1, keepdim=True) > 0, fg, torch.ones_like(fg))
    return fg / fg.sum(1, keepdim=True)


def thumbnail_init(conv: nn.Conv2d, cells: int = 6) -> None:
    """Start each patch's embedding as a colour thumbnail of the patch: channel c of cell (i, j) of a cells x cells
    grid averages that cell's pixels of colour c (6 x 6 x 3 = 108 of the 128 dims; the rest start random and
    small). A from-scratch ViT with 42 px patches otherwise starts from a random 5292 -> 128 projection and sits
    on the label prior for hundreds of steps. No pretrained weights are involved."""
    out, _, k, _ = conv.weight.shape
    step = k // cells
    with torch.no_grad():
        conv.weight.normal_(0, 0.002)
        conv.bias.zero_() if conv.bias is not None else None
        n = 0
        for c in range(3):
            for i in range(cells):
                for j in range(cells):
                    if n >= out:
                        return
                    conv.weight[n, c, i * step : (i + 1) * step, j * step : (j + 1) * step] = 1.0 / (step * step)
                    n += 1


def batch(rng: random.Random, size: int, table: torch.Tensor, patch: int = 42, clean: bool = False):
    """`size` frames from several short clips (1-3 items or none), each clip with its own look and codec."""
    frames, labels, colours, kinds = [], [], [], []
    while len(frames) < size:
        n = min(8, size - len(frames))
        clips = [still_clip(rng, 4.0, rng.choice([0, 1, 1, 2, 2, 3])) if rng.random() > 0.08 else None
                 for _ in range(n)]
        clips = [c if c is not None else empty(rng) for c in clips]
        # several still clips rendered as one "video" so H.264 sees cuts between them, as in real footage
        for clip in clips:
            masks: list = []
            t = rng.uniform(0, 3.9)
            frames.append(render_clip(clip, [t], rng, masks, clean=clean)[0])
            labels.append(frame_labels(clip, t))
            c, k = patch_labels(clip, t, masks[0], patch)
            colours.append(c)
            kinds.append(k)
    pixels = normalize(torch.from_numpy(np.stack(frames)), table)  # [B, 3, 336, 336]
    dense = torch.from_numpy(np.stack(colours)), torch.from_numpy(np.stack(kinds))
    return pixels, {k: torch.tensor([l[k] for l in labels]) for k in HEADS}, dense  # dense: [B, 64] each


def step_batch(seed: int, size: int, stats: torch.Tensor, step: int, clean_until: int = 0):
    """The batch of training step `step`: a function of (seed, step) only, so a resumed run sees the same data.
    Curriculum: clean frames before `clean_until`, then half clean, half degraded."""
    rng = random.Random(seed * 1_000_003 + step)
    clean = step < clean_until or (clean_until > 0 and rng.random() < 0.5)
    return batch(rng, size, stats, clean=clean)


def empty(rng: random.Random):
    clip = still_clip(rng, 4.0, 1)
    clip.events.clear()
    return clip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", default="train/runs/vision")
    parser.add_argument("--attn", type=float, default=1.0, help="weight of the compressor-attention guide")
    parser.add_argument("--workers", type=int, default=1, help="processes making batches (0: in the trainer)")
    parser.add_argument("--device", default="cpu", help="cuda on a GPU machine; give it --workers for the rendering")
    parser.add_argument("--clean-until", type=int, default=0, help="curriculum: clean frames before this step")
    parser.add_argument("--seed", type=int, default=1000)  # training seeds: 1000+; evaluation uses < 1000
    args = parser.parse_args(argv)
    setup_threads()
    out = Path(args.out)
    model = VisionStage(DemoSize()).to(args.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.05)
    step = 0
    state = load(out / "last.pt")
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}")
    table = pixel_stats(CLIP_MEAN, CLIP_STD)
    log = LossLog(out / "log.jsonl")
    seen: dict[str, list[float]] = {k: [] for k in HEADS}  # + "patch_id": identity accuracy on item patches
    losses: list[float] = []
    make = functools.partial(step_batch, args.seed, args.batch, table, clean_until=args.clean_until)
    batches = produced(make, range(step, args.steps), args.workers)
    while step < args.steps:
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.monotonic()
        pixels, labels, (colours, kinds) = next(batches)
        pixels, colours, kinds = pixels.to(args.device), colours.to(args.device), kinds.to(args.device)
        labels = {k: v.to(args.device) for k, v in labels.items()}
        t1 = time.monotonic()
        logits, patch_colour, patch_kind, attn = model(pixels)
        loss = sum(F.cross_entropy(logits[k], labels[k]) for k in HEADS)
        loss = loss + dense_loss(patch_colour, colours) + dense_loss(patch_kind, kinds)
        # Guide the compressor to the items (cross-entropy of its head-averaged attention against the item mask):
        # without it the one token stayed a background average and the frame heads sat on the label prior.
        target = attention_target(colours)  # [B, 64]
        loss = loss - args.attn * (target * attn.mean(1).clamp_min(1e-8).log()).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        for k in HEADS:
            seen[k].append((logits[k].argmax(-1) == labels[k]).float().mean().item())
        for name, lo, hi in (("patch_shape", 1, 5), ("patch_digit", 5, 15), ("patch_word", 15, len(PATCH_KINDS))):
            on = (kinds >= lo) & (kinds < hi)
            if on.any():
                seen.setdefault(name, []).append((patch_kind.argmax(-1)[on] == kinds[on]).float().mean().item())
        if step % 10 == 0:
            log.write(step=step, loss=round(sum(losses) / len(losses), 4), lr=round(lr, 6),
                      data_s=round(t1 - t0, 2), step_s=round(time.monotonic() - t0, 2),
                      acc={k: round(sum(v[-20:]) / len(v[-20:]), 3) for k, v in seen.items()})
            losses.clear()
        if step % 50 == 0 or step == args.steps:
            save(out / "last.pt", model=model.state_dict(), opt=opt.state_dict(), step=step)


if __name__ == "__main__":
    main()
