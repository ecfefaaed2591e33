"""Pixels for a Timeline: backgrounds, shapes and text drawn with PIL, then optional noise and blur.

Variety is deliberate (fonts, sizes, positions, outlines, backgrounds, noise): the demo model must learn the
elements of the world, not this renderer.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vidmini.demo.timeline import Event, Scene, Timeline
from vidmini.demo.world import COLOURS

FONT_GLOBS = ["/usr/share/fonts/truetype/**/*.ttf", "/usr/share/fonts/**/*.otf", "/Library/Fonts/*.ttf",
              "C:/Windows/Fonts/*.ttf"]


@functools.lru_cache(maxsize=1)
def fonts() -> tuple[str | None, ...]:
    """TrueType fonts found on this machine (minus symbol fonts), plus None for PIL's built-in font."""
    found = sorted({p for g in FONT_GLOBS for p in glob.glob(g, recursive=True) if "Math" not in p})
    return tuple(found[:40]) + (None,)


@functools.lru_cache(maxsize=512)
def load_font(path: str | None, size: int) -> ImageFont.ImageFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


# How far a drawn colour strays from its named RGB, per channel. Training data raises it (train/pool.py, through
# `colour_jitter`) so that the model learns colour names, not eight exact values.
COLOUR_JITTER = 18


@contextlib.contextmanager
def colour_jitter(amount: int):
    """Draw with another colour jitter inside the block; the default comes back after it."""
    global COLOUR_JITTER
    previous, COLOUR_JITTER = COLOUR_JITTER, amount
    try:
        yield
    finally:
        COLOUR_JITTER = previous


def jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int | None = None) -> tuple[int, int, int]:
    amount = COLOUR_JITTER if amount is None else amount
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def draw_background(scene: Scene, width: int, height: int) -> Image.Image:
    rng = random.Random(scene.seed)
    a, b = np.array(scene.colour_a, np.float32), np.array(scene.colour_b, np.float32)
    if scene.kind == "gradient":
        ramp = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
        ramp = ramp[None, :, None] if len(ramp) == width else ramp[:, None, None]
        pixels = a + (b - a) * ramp
        pixels = np.broadcast_to(pixels, (height, width, 3))
    elif scene.kind == "noise":
        gen = np.random.default_rng(scene.seed)
        small = gen.random((max(2, height // 24), max(2, width // 24), 1), dtype=np.float32)
        coarse = np.asarray(Image.fromarray((small[..., 0] * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR))
        pixels = a + (b - a) * (coarse[..., None] / 255.0)
    elif scene.kind == "stripes":
        period = rng.randint(8, 40)
        cols = ((np.arange(width) // period) % 2).astype(np.float32)
        pixels = np.broadcast_to(a + (b - a) * cols[None, :, None], (height, width, 3))
    else:
        pixels = np.broadcast_to(a, (height, width, 3))
    return Image.fromarray(np.ascontiguousarray(pixels).clip(0, 255).astype(np.uint8))


def star_points(cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.42
        angle = turn + math.pi * i / 5 - math.pi / 2
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_event(draw: ImageDraw.ImageDraw, event: Event, t: float, width: int, height: int,
               fill: int | None = None) -> None:
    """The event's item as it looks at time t. `fill` draws it in that one value instead (for label masks)."""
    rng = random.Random(event.font)
    item = event.item
    colour = jitter(COLOURS[item.colour], rng)
    side = min(width, height)
    cx, cy = event.centre(t)
    cx, cy = cx * width, cy * height
    outline = None
    if rng.random() < 0.25:  # a thin outline in a colour far from the fill, as some title cards have
        outline = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
    if fill is not None:
        colour, outline = fill, (fill if outline is not None else None)
    line = max(1, int(side * 0.012))
    if item.kind == "shape":
        r = event.size * side / 2
        turn = rng.uniform(-0.3, 0.3)
        if item.value == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=outline, width=line)
        elif item.value == "square":
            pts = [(cx + r * math.cos(turn + k * math.pi / 2 + math.pi / 4) * 1.3,
                    cy + r * math.sin(turn + k * math.pi / 2 + math.pi / 4) * 1.3) for k in range(4)]
            draw.polygon(pts, fill=colour, outline=outline, width=line)
        elif item.value == "triangle":
            pts = [(cx + r * math.cos(turn + k * 2 * math.pi / 3 - math.pi / 2),
                    cy + r * 1.1 * math.sin(turn + k * 2 * math.pi / 3 - math.pi / 2) + r * 0.15) for k in range(3)]
            draw.polygon(pts, fill=colour, outline=outline, width=line)
        else:
            draw.polygon(star_points(cx, cy, r * 1.1, turn), fill=colour, outline=outline, width=line)
        return
    path = fonts()[event.font % len(fonts())]
    size = max(8, int(event.size * side))
    font = load_font(path, size)
    left, top, right, bottom = draw.textbbox((0, 0), item.value, font=font)
    if right - left > 0.92 * width:  # long words shrink to fit the frame
        size = max(8, int(size * 0.92 * width / (right - left)))
        font = load_font(path, size)
        left, top, right, bottom = draw.textbbox((0, 0), item.value, font=font)
    w, h = right - left, bottom - top
    x = min(max(cx - w / 2, 0), max(0, width - w)) - left
    y = min(max(cy - h / 2, 0), max(0, height - h)) - top
    stroke = line if outline else 0
    draw.text((x, y), item.value, font=font, fill=colour, stroke_width=stroke, stroke_fill=outline)


def render(timeline: Timeline, t: float, width: int = 336, height: int = 336, noise: float = 0.0,
           blur: float = 0.0, background: Image.Image | None = None) -> np.ndarray:
    """The frame at time t: [height, width, 3] uint8. `background` reuses an already drawn scene."""
    image = background.copy() if background is not None else draw_background(timeline.scene_at(t), width, height)
    draw = ImageDraw.Draw(image)
    for event in timeline.visible(t):
        draw_event(draw, event, t, width, height)
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image)
    if noise > 0:
        gen = np.random.default_rng(int(t * 1000) + 7)
        pixels = (pixels + gen.normal(0, noise, pixels.shape)).clip(0, 255).astype(np.uint8)
    return pixels


def render_mask(timeline: Timeline, t: float, width: int, height: int) -> np.ndarray:
    """[height, width] uint8: 0 = background, i + 1 = the i-th visible event (later events on top)."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for i, event in enumerate(timeline.visible(t)):
        draw_event(draw, event, t, width, height, fill=i + 1)
    return np.asarray(image)
