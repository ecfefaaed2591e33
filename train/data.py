"""Training data: random timelines rendered with random sizes, noise, blur and JPEG / H.264 compression,
squashed to 336x336 exactly as the pipeline squashes a decoded frame (vidmini/video/frames.py)."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from vidmini.demo.render import draw_background, render, render_mask
from vidmini.demo.timeline import Timeline
from vidmini.demo.video import h264_roundtrip
from vidmini.demo.world import COLOUR_NAMES, DIGITS, SHAPES, WORDS
from vidmini.inputs.video.frames import squash

SIZES = [(336, 336), (320, 240), (640, 360), (480, 270), (256, 256), (160, 160), (224, 224), (400, 300), (192, 108),
         (128, 128), (540, 540)]


CLEAN_SIZES = [(336, 336), (640, 360), (480, 360), (540, 540), (400, 300)]


def frame_size(rng: random.Random, clean: bool = False) -> tuple[int, int]:
    w, h = rng.choice(CLEAN_SIZES if clean else SIZES)
    return w - w % 2, h - h % 2


def degrade(frames: np.ndarray, rng: random.Random) -> np.ndarray:
    """[T, H, W, 3] -> the same after a random codec: none, JPEG per frame, or H.264 over the clip."""
    pick = rng.random()
    if pick < 0.35:
        return h264_roundtrip(frames, crf=rng.randint(18, 40))
    if pick < 0.6:
        quality = rng.randint(15, 90)
        out = []
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=quality)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        return np.stack(out)
    return frames


def render_clip(tl: Timeline, times: list[float], rng: random.Random, masks: list | None = None,
                clean: bool = False) -> np.ndarray:
    """[T, 336, 336, 3] uint8 frames of the timeline at `times`, one random look for the whole clip. When `masks`
    is a list, each frame's [336, 336] event mask (render.render_mask, squashed the same way) is appended to it.
    `clean`: large frames without noise, blur or codec, the curriculum's first lessons (from scratch, the ViT
    learnt nothing of digits in 1,400 steps of fully degraded frames, where the smallest words are unreadable)."""
    width, height = frame_size(rng, clean)
    if masks is not None:
        masks.extend(squash(render_mask(tl, t, width, height)[..., None])[..., 0] for t in times)
    noise = 0.0 if clean else rng.choice([0.0, 0.0, rng.uniform(2, 14)])
    blur = 0.0 if clean else rng.choice([0.0, 0.0, 0.0, rng.uniform(0.3, 1.5)])
    backgrounds = {}
    frames = []
    for t in times:
        scene = tl.scene_at(t)
        if id(scene) not in backgrounds:
            backgrounds[id(scene)] = draw_background(scene, width, height)
        frames.append(render(tl, t, width, height, noise=noise, blur=blur, background=backgrounds[id(scene)]))
    frames = np.stack(frames) if clean else degrade(np.stack(frames), rng)
    return np.stack([squash(f) for f in frames])


# ---- per-frame labels for the vision pre-training --------------------------------------------------------------
# One head per question the compressed token must answer: the colour of each shape kind (or absent), the digit,
# the digit's colour, the word, the word's colour.
HEADS = {**{f"shape_{s}": len(COLOUR_NAMES) + 1 for s in SHAPES},
         "digit": len(DIGITS) + 1, "digit_colour": len(COLOUR_NAMES) + 1,
         "word": len(WORDS) + 1, "word_colour": len(COLOUR_NAMES) + 1}


def frame_labels(tl: Timeline, t: float) -> dict[str, int]:
    """Class 0 = absent; else 1 + index in the vocabulary."""
    labels = {name: 0 for name in HEADS}
    for e in tl.visible(t):
        colour = 1 + COLOUR_NAMES.index(e.item.colour)
        if e.item.kind == "shape":
            labels[f"shape_{e.item.value}"] = colour
        elif e.item.kind == "digit":
            labels["digit"], labels["digit_colour"] = 1 + DIGITS.index(e.item.value), colour
        else:
            labels["word"], labels["word_colour"] = 1 + WORDS.index(e.item.value), colour
    return labels


# ---- per-patch labels: what is under each patch (dense supervision gets a from-scratch ViT going) -----------
# Identity, not only kind: a label per digit and per word makes every patch of an item say which item it is part
# of, so the ViT learns to read glyphs across patches (with kind-only labels digit and word identity sat on the
# prior for 3,000 steps).
PATCH_KINDS = ["none"] + [f"shape_{s}" for s in SHAPES] + [f"digit_{d}" for d in DIGITS] + [f"word_{w}" for w in WORDS]


def patch_labels(tl: Timeline, t: float, mask: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour [N], kind [N]) per patch of the [S, S] mask: the event covering most of the patch when it covers
    at least 8% of it, else 0 (background)."""
    visible = tl.visible(t)
    g = mask.shape[0] // patch
    cells = mask[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    colour, kind = np.zeros(g * g, np.int64), np.zeros(g * g, np.int64)
    for n, cell in enumerate(cells):
        counts = np.bincount(cell, minlength=len(visible) + 1)[1:]
        if counts.size and counts.max() >= 0.08 * cell.size:
            e = visible[int(counts.argmax())]
            colour[n] = 1 + COLOUR_NAMES.index(e.item.colour)
            kind[n] = PATCH_KINDS.index(f"{e.item.kind}_{e.item.value}")
    return colour, kind
