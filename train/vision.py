"""Stage 1: the convolutional vision tower and the compressor, from scratch, on single frames, without the LLM.

Each frame's one compressed token must tell, through small linear heads, the colour of every shape kind on screen,
the digit and its colour, and the word and its colour; every cell of the tower's 7x7 grid must tell the colour and
the identity (which shape, digit or word) of the item under it. Frames come from train/pool.py's shards, already
pooled to the tower's 168 px input. Held-out accuracy per head is logged on frames of evaluation seeds (< 1000).

    python -m train.pool --shards 400 &                       # the data, rendered once
    python -m train.vision --steps 6000 [--out train/runs/vision]     # resumes from OUT/last.pt
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.common import LossLog, load, save, setup_threads
from train.data import HEADS, PATCH_KINDS
from train.pool import make_shard
from vidmini.demo.config import DemoSize, vision_config
from vidmini.demo.world import COLOUR_NAMES
from vidmini.families.llava_mini.compressor import Compressor
from vidmini.families.llava_mini.config import CLIP_MEAN, CLIP_STD
from vidmini.families.llava_mini.conv_vision import ConvVisionTower
from vidmini.inputs.preprocess import normalize, pixel_stats

HEAD_NAMES = list(HEADS)
CELL_GROUPS = (("cell_shape", 1, 5), ("cell_digit", 5, 15), ("cell_word", 15, len(PATCH_KINDS)))


class VisionStage(nn.Module):
    """The demo model's vision_tower + compressor (same module names), and linear heads on the token and cells."""

    def __init__(self, size: DemoSize):
        super().__init__()
        self.vision_tower = ConvVisionTower(vision_config(size))
        self.compressor = Compressor(1, size.vision_hidden, size.compressor_heads)
        nn.init.normal_(self.compressor.query, std=0.02)
        nn.init.xavier_uniform_(self.compressor.attn.in_proj_weight)
        nn.init.normal_(self.vision_tower.positions, std=0.02)
        self.heads = nn.ModuleDict({name: nn.Linear(size.vision_hidden, n) for name, n in HEADS.items()})
        self.cell_colour = nn.Linear(size.vision_hidden, len(COLOUR_NAMES) + 1)
        self.cell_kind = nn.Linear(size.vision_hidden, len(PATCH_KINDS))

    def forward(self, pooled: torch.Tensor):
        cells = self.vision_tower.forward_pooled(pooled)  # [B, 49, D]
        token = self.compressor(cells)[:, 0]  # [B, D]
        heads = {name: head(token) for name, head in self.heads.items()}  # each [B, classes]
        return heads, self.cell_colour(cells), self.cell_kind(cells), attention(self.compressor, cells)


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
    """Cross-entropy per cell, background cells weighted down (~89% of cells are background)."""
    labels = labels.flatten()  # [B*N]
    weight = torch.where(labels > 0, 1.0, background)
    return (F.cross_entropy(logits.flatten(0, 1), labels, reduction="none") * weight).sum() / weight.sum()


def attention_target(colours: torch.Tensor) -> torch.Tensor:
    """[B, N] cell colours -> [B, N] where the one token should look: the items' cells, evenly (all cells when
    the frame shows nothing)."""
    fg = (colours > 0).float()
    fg = torch.where(fg.sum(1, keepdim=True) > 0, fg, torch.ones_like(fg))
    return fg / fg.sum(1, keepdim=True)


class Shards:
    """The pool's shards on disk, sampled uniformly; new shards are picked up as train/pool.py writes them.
    At most `keep` shards are held in memory (a random subset rotates in)."""

    def __init__(self, folder: Path, rng: random.Random, keep: int = 160):
        self.folder, self.rng, self.keep = folder, rng, keep
        self.loaded: dict[str, dict[str, np.ndarray]] = {}

    def refresh(self) -> None:
        names = sorted(p.name for p in self.folder.glob("shard-*.npz"))
        fresh = [n for n in names if n not in self.loaded]
        self.rng.shuffle(fresh)
        for name in fresh[: max(4, self.keep // 8)]:
            if len(self.loaded) >= self.keep:
                self.loaded.pop(self.rng.choice(sorted(self.loaded)))
            with np.load(self.folder / name) as z:
                self.loaded[name] = {k: z[k] for k in z.files}
        if not self.loaded:
            raise SystemExit(f"no shards in {self.folder}: run python -m train.pool first")

    def batch(self, size: int) -> dict[str, np.ndarray]:
        names = sorted(self.loaded)
        picks = [(n, self.rng.randrange(len(self.loaded[n]["frames"]))) for n in
                 (self.rng.choice(names) for _ in range(size))]
        return {k: np.stack([self.loaded[n][k][i] for n, i in picks])
                for k in ("frames", "heads", "cell_colour", "cell_kind")}


def tensors(data: dict[str, np.ndarray], table: torch.Tensor, device: str):
    pooled = normalize(torch.from_numpy(data["frames"]), table).to(device)  # [B, 3, 168, 168]
    heads = torch.from_numpy(data["heads"].astype(np.int64)).to(device)  # [B, 8]
    colours = torch.from_numpy(data["cell_colour"].astype(np.int64)).to(device)  # [B, 49]
    kinds = torch.from_numpy(data["cell_kind"].astype(np.int64)).to(device)  # [B, 49]
    return pooled, heads, colours, kinds


def losses(model: VisionStage, pooled, heads, colours, kinds, attn_weight: float = 1.0):
    logits, cell_colour, cell_kind, attn = model(pooled)
    loss = sum(F.cross_entropy(logits[k], heads[:, i]) for i, k in enumerate(HEAD_NAMES))
    loss = loss + dense_loss(cell_colour, colours) + 2.0 * dense_loss(cell_kind, kinds)
    # the compressor's head-averaged attention pulled onto the items' cells
    target = attention_target(colours)  # [B, 49]
    loss = loss - attn_weight * (target * attn.mean(1).clamp_min(1e-8).log()).sum(1).mean()
    return loss, logits, cell_kind


def accuracy(logits, heads, cell_kind, kinds) -> dict[str, float]:
    acc = {k: (logits[k].argmax(-1) == heads[:, i]).float().mean().item() for i, k in enumerate(HEAD_NAMES)}
    for name, lo, hi in CELL_GROUPS:
        on = (kinds >= lo) & (kinds < hi)
        if on.any():
            acc[name] = (cell_kind.argmax(-1)[on] == kinds[on]).float().mean().item()
    # what the questions need: the head right on frames where the item is present
    for k in ("digit", "word"):
        on = heads[:, HEAD_NAMES.index(k)] > 0
        if on.any():
            acc[f"{k}_shown"] = (logits[k].argmax(-1)[on] == heads[:, HEAD_NAMES.index(k)][on]).float().mean().item()
    return acc


@torch.no_grad()
def held_out(model: VisionStage, data, table, device) -> dict[str, float]:
    model.eval()
    pooled, heads, colours, kinds = tensors(data, table, device)
    _, logits, cell_kind = losses(model, pooled, heads, colours, kinds)
    model.train()
    return {k: round(v, 3) for k, v in accuracy(logits, heads, cell_kind, kinds).items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--pool", default="train/runs/pool")
    parser.add_argument("--out", default="train/runs/vision")
    parser.add_argument("--attn", type=float, default=1.0, help="weight of the compressor-attention guide")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-frames", type=int, default=256, help="held-out frames (seed 7) scored every 200 steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--start-from", default=None, metavar="PT",
                        help="when OUT has no checkpoint yet: start from this one (e.g. train/checkpoints/vision.pt, "
                             "the last committed stage 1 weights; their optimizer moments are not kept)")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    out = Path(args.out)
    torch.manual_seed(0)
    model = VisionStage(DemoSize()).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    step = 0
    state = load(out / "last.pt") or (load(Path(args.start_from)) if args.start_from else None)
    if state:
        model.load_state_dict(state["model"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}")
    first = step  # warm up again after a resume: the moments may be fresh (a committed checkpoint has none)
    table = pixel_stats(CLIP_MEAN, CLIP_STD)
    shards = Shards(Path(args.pool), random.Random(step))
    evaluation = make_shard(7, 0, args.eval_frames)  # seed 7: an evaluation seed, never trained on
    log = LossLog(out / "log.jsonl")
    seen: dict[str, list[float]] = {}
    running: list[float] = []
    while step < args.steps:
        if step % 50 == 0 or not shards.loaded:
            shards.refresh()
        lr = args.lr * min(1.0, (step - first + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.monotonic()
        pooled, heads, colours, kinds = tensors(shards.batch(args.batch), table, args.device)
        loss, logits, cell_kind = losses(model, pooled, heads, colours, kinds, args.attn)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running.append(loss.item())
        for k, v in accuracy(logits, heads, cell_kind, kinds).items():
            seen.setdefault(k, []).append(v)
        if step % 20 == 0:
            log.write(step=step, loss=round(sum(running) / len(running), 4), lr=round(lr, 6),
                      step_s=round(time.monotonic() - t0, 3), shards=len(shards.loaded),
                      acc={k: round(sum(v[-20:]) / len(v[-20:]), 3) for k, v in seen.items()})
            running.clear()
        if step % 200 == 0 or step == args.steps:
            log.write(step=step, held_out=held_out(model, evaluation, table, args.device))
        if step % 100 == 0 or step == args.steps:
            save(out / "last.pt", model=model.state_dict(), opt=opt.state_dict(), step=step)


if __name__ == "__main__":
    main()
