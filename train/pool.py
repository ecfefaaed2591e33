"""Stage 1's data, rendered once and reused: shards of single frames at the vision tower's input size, with labels.

Rendering (PIL, random sizes, JPEG / H.264 round trips) costs more than a training step of the convolutional
tower, so frames are made by `--workers` processes into `OUT/shard-NNNNN.npz` (written atomically) and the trainer
samples from every shard on disk, picking up new ones as they land. A shard is a function of (seed, index) only.

Each frame is made exactly as the pipeline makes it: drawn at a random size, degraded, squashed to 336x336
nearest-neighbour (vidmini/video/frames.py), then average-pooled 2x2 to 168 px, which is the tower's first
operation (vidmini/model/conv_vision.py: pooling commutes with the per-channel normalization).

    python -m train.pool --shards 400 --workers 1 [--out train/runs/pool]     # skips shards already on disk
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np

from train.data import HEADS, frame_labels, patch_labels, render_clip
from vidmini.demo import render
from vidmini.demo.clips import still_clip
from vidmini.demo.config import DemoSize

SIZE = DemoSize()
POOLED = SIZE.image_size // SIZE.pool  # 168
PER_SHARD = 256


def pool_frame(frame: np.ndarray, k: int = SIZE.pool) -> np.ndarray:
    """[S, S, 3] uint8 -> [S/k, S/k, 3] uint8, the k x k mean rounded."""
    s = frame.shape[0] // k
    return np.rint(frame.reshape(s, k, s, k, 3).mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)


# Which kinds a frame's items are drawn from. "text" shards show digits and words in most frames: glyphs are what
# stage 1 learns slowest (which word 0.24 at step 4,500 against shapes' colours 0.97), shapes are kept in the mix.
MIXES = {"even": ("shape", "shape", "digit", "word"), "text": ("shape", "digit", "word", "word")}


def varied_clip(rng: random.Random, mix: str = "even"):
    """A 4-second still clip with 0-3 items, their sizes spread wider than the generator's defaults (small and
    large text both occur in videos the model was not trained on)."""
    n = rng.choice([0, 1, 1, 2, 2, 3])
    clip = still_clip(rng, 4.0, max(1, n), MIXES[mix])
    if n == 0:
        clip.events.clear()
    for event in clip.events:
        event.size = min(0.6, event.size * rng.uniform(0.55, 1.3))
    return clip


def make_shard(seed: int, index: int, n: int = PER_SHARD, mix: str = "even") -> dict[str, np.ndarray]:
    rng = random.Random(seed * 1_000_003 + index + (0 if mix == "even" else 500_000))
    frames, heads, colours, kinds = [], [], [], []
    with render.colour_jitter(34):  # other shades of the eight colours
        for _ in range(n):
            clip, t, masks = varied_clip(rng, mix), rng.uniform(0, 3.9), []
            frame = render_clip(clip, [t], rng, masks, clean=rng.random() < 0.2)[0]  # [336, 336, 3]
            frames.append(pool_frame(frame))
            labels = frame_labels(clip, t)
            heads.append([labels[k] for k in HEADS])
            c, k = patch_labels(clip, t, masks[0], SIZE.patch_size)
            colours.append(c)
            kinds.append(k)
    return dict(frames=np.stack(frames), heads=np.array(heads, np.int16),
                cell_colour=np.stack(colours).astype(np.int16), cell_kind=np.stack(kinds).astype(np.int16))


def shard_name(index: int, mix: str = "even") -> str:
    return f"shard-{index:05d}.npz" if mix == "even" else f"shard-{mix}-{index:05d}.npz"


def write_shard(out: Path, seed: int, index: int, mix: str = "even") -> Path:
    path = out / shard_name(index, mix)
    if not path.exists():
        tmp = out / f".{path.stem}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **make_shard(seed, index, mix=mix))
        os.replace(tmp, path)
    return path


def _write(job: tuple[str, int, int, str]) -> str:
    return str(write_shard(Path(job[0]), *job[1:]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=400)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="train/runs/pool")
    parser.add_argument("--seed", type=int, default=1000)  # training seeds: 1000+; evaluation uses < 1000
    parser.add_argument("--mix", choices=sorted(MIXES), default="even", help="which kinds the frames show (see MIXES)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), args.seed, i, args.mix) for i in range(args.first, args.first + args.shards)]
    if args.workers <= 1:
        for job in jobs:
            print(_write(job), flush=True)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for path in pool.imap(_write, jobs):
            print(path, flush=True)


if __name__ == "__main__":
    main()
