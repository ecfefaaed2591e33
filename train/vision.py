"""Stage 1: the ViT and the compressor, from scratch, on single frames, without the LLM.

Each frame's one compressed token must tell, through small linear heads, the colour of every shape kind on screen,
the digit and its colour, and the word and its colour. That makes the token carry what the questions ask about
before the LLM is involved; stage 2 (train/align.py) then teaches the projector and pre-fusion to say it.

    python -m train.vision --steps 1500 [--out train/runs/vision]     # resumes from OUT/last.pt
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig

from train.common import LossLog, load, save, setup_threads
from train.data import HEADS, frame_labels, render_clip
from vidmini.demo.clips import still_clip
from vidmini.demo.config import DemoSize, vision_config
from vidmini.model.compressor import Compressor
from vidmini.model.config import CLIP_MEAN, CLIP_STD
from vidmini.model.preprocess import normalization_table, normalize
from vidmini.model.vision import VisionTower


class VisionStage(nn.Module):
    """The demo model's vision_tower + compressor (same module names), and one linear head per label."""

    def __init__(self, size: DemoSize):
        super().__init__()
        self.vision_tower = VisionTower(CLIPVisionConfig.from_dict(vision_config(size)), -1, "patch")
        self.compressor = Compressor(1, size.vision_hidden, size.compressor_heads)
        nn.init.normal_(self.compressor.query, std=0.02)
        nn.init.xavier_uniform_(self.compressor.attn.in_proj_weight)
        self.heads = nn.ModuleDict({name: nn.Linear(size.vision_hidden, n) for name, n in HEADS.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        patches = self.vision_tower(pixels)  # [B, 64, D]
        token = self.compressor(patches)[:, 0]  # [B, D]
        return {name: head(token) for name, head in self.heads.items()}  # each [B, classes]


def batch(rng: random.Random, size: int, table: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`size` frames from several short clips (1-3 items or none), each clip with its own look and codec."""
    frames, labels = [], []
    while len(frames) < size:
        n = min(8, size - len(frames))
        clips = [still_clip(rng, 4.0, rng.choice([0, 1, 1, 2, 2, 3])) if rng.random() > 0.08 else None
                 for _ in range(n)]
        clips = [c if c is not None else empty(rng) for c in clips]
        # several still clips rendered as one "video" so H.264 sees cuts between them, as in real footage
        for clip in clips:
            frames.append(render_clip(clip, [rng.uniform(0, 3.9)], rng)[0])
            labels.append(frame_labels(clip, 1.0))
    pixels = normalize(torch.from_numpy(__import__("numpy").stack(frames)), table)  # [B, 3, 336, 336]
    return pixels, {k: torch.tensor([l[k] for l in labels]) for k in HEADS}


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
    parser.add_argument("--seed", type=int, default=1000)  # training seeds: 1000+; evaluation uses < 1000
    args = parser.parse_args(argv)
    setup_threads()
    out = Path(args.out)
    model = VisionStage(DemoSize())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    step = 0
    state = load(out / "last.pt")
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}")
    table = normalization_table(CLIP_MEAN, CLIP_STD)
    log = LossLog(out / "log.jsonl")
    seen: dict[str, list[float]] = {k: [] for k in HEADS}
    losses: list[float] = []
    while step < args.steps:
        rng = random.Random(args.seed * 1_000_003 + step)  # resumable: step s always sees the same data
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.monotonic()
        pixels, labels = batch(rng, args.batch, table)
        t1 = time.monotonic()
        logits = model(pixels)
        loss = sum(F.cross_entropy(logits[k], labels[k]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        for k in HEADS:
            seen[k].append((logits[k].argmax(-1) == labels[k]).float().mean().item())
        if step % 10 == 0:
            log.write(step=step, loss=round(sum(losses) / len(losses), 4), lr=round(lr, 6),
                      data_s=round(t1 - t0, 2), step_s=round(time.monotonic() - t0, 2),
                      acc={k: round(sum(v[-20:]) / len(v[-20:]), 3) for k, v in seen.items()})
            losses.clear()
        if step % 50 == 0 or step == args.steps:
            save(out / "last.pt", model=model.state_dict(), opt=opt.state_dict(), step=step)


if __name__ == "__main__":
    main()
