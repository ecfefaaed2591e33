"""Does the demo model depend on vidmini's own renderer? Clips drawn by this file's code alone, asked in other words.

    python bench/other_renderer.py [--clips 48] [--sequences 12] [--needles 1200:4,3600:2] [--model demo] [--quantize auto]
                                   [--seed 5000] [--out bench/results/other_renderer]

Nothing here comes from vidmini.demo's renderer, clips or question templates: items are drawn with PIL primitives
and fonts the training never picked in this way (PIL's tiny bitmap font scaled up, its default TrueType font at
small and large sizes, DejaVu faces), in other shades of the eight colours, on other backgrounds (checkerboards,
smooth noise, gradients, pastel solids), written as H.264 at 1-30 fps and several sizes, and the questions are
phrased here ("What number is shown?", "Which shape appears first?"). Only the vocabulary (the colour, shape,
digit and word names the model can know) is shared. An answer is right when it names the expected value and no
other value of the same kind. Saves OUT.json and OUT.txt; prints accuracy by type, and by font for text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vidmini.demo.world import DIGITS, SHAPES, WORDS  # noqa: E402  (the vocabulary only)

# Other shades than the renderer's base RGBs; each stays clearly inside its name.
SHADES = {
    "red": [(200, 0, 0), (255, 60, 60), (170, 20, 40)],
    "orange": [(255, 165, 0), (230, 110, 0), (255, 130, 50)],
    "yellow": [(255, 255, 0), (235, 205, 40), (255, 240, 90)],
    "green": [(0, 128, 0), (60, 200, 80), (20, 150, 90)],
    "blue": [(0, 0, 255), (40, 110, 210), (20, 40, 160)],
    "purple": [(128, 0, 128), (160, 80, 220), (110, 30, 150)],
    "white": [(255, 255, 255), (238, 238, 238)],
    "black": [(0, 0, 0), (35, 35, 35)],
}
FONTS = ["pil-bitmap", "pil-default", "DejaVuSerif-Bold", "DejaVuSansMono", "DejaVuSans-ExtraLight"]
SIZES = [(320, 240), (640, 360), (480, 480), (256, 144)]
FPS = [1, 2, 5, 10, 25, 30]


def font(name: str, px: int):
    if name == "pil-default":
        return ImageFont.load_default(size=px)
    path = f"/usr/share/fonts/truetype/dejavu/{name}.ttf"
    return ImageFont.truetype(path, px) if os.path.isfile(path) else ImageFont.load_default(size=px)


def background(rng: random.Random, w: int, h: int) -> Image.Image:
    """Muted colours only, so that no item's colour name could describe the background."""
    def muted():
        base = rng.randint(80, 170)
        return tuple(int(np.clip(base + rng.randint(-25, 25), 0, 255)) for _ in range(3))

    kind = rng.choice(["solid", "gradient", "checker", "noise"])
    a, b = np.array(muted(), float), np.array(muted(), float)
    if kind == "solid":
        arr = np.broadcast_to(a, (h, w, 3))
    elif kind == "gradient":
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
        line = a[None] * (1 - t[:, None]) + b[None] * t[:, None]
        arr = np.broadcast_to(line[None], (h, w, 3)) if len(t) == w else np.broadcast_to(line[:, None], (h, w, 3))
    elif kind == "checker":
        cell = rng.randint(12, 48)
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.where((((yy // cell) + (xx // cell)) % 2 == 0)[..., None], a, b)
    else:
        small = np.random.default_rng(rng.randrange(1 << 30)).uniform(80, 170, (4, 6, 3)).astype(np.uint8)
        return Image.fromarray(small).resize((w, h), Image.BICUBIC)
    return Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8))


def star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.42
        angle = -np.pi / 2 + k * np.pi / 5
        points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return points


def draw_shape(img: Image.Image, rng: random.Random, shape: str, rgb) -> None:
    w, h = img.size
    r = rng.uniform(0.12, 0.3) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=rgb)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=rgb)
    else:
        d.polygon(star(cx, cy, r), fill=rgb)


def draw_text(img: Image.Image, rng: random.Random, text: str, rgb, font_name: str, large: bool) -> None:
    w, h = img.size
    if font_name == "pil-bitmap":  # PIL's built-in 11-px bitmap font, drawn small and scaled up, blocky
        f = ImageFont.load_default_imagefont()
        l, t, r, b = ImageDraw.Draw(img).textbbox((0, 0), text, font=f)
        layer = Image.new("L", (r - l + 2, b - t + 2), 0)
        ImageDraw.Draw(layer).text((1 - l, 1 - t), text, font=f, fill=255)
        scale = max(2, int((0.45 if large else 0.18) * h / layer.height))
        scale = min(scale, max(1, int(0.9 * w / layer.width)))
        layer = layer.resize((layer.width * scale, layer.height * scale), Image.NEAREST)
        x, y = rng.randint(0, w - layer.width), rng.randint(0, h - layer.height)
        img.paste(Image.new("RGB", layer.size, rgb), (x, y), layer)
        return
    px = int((rng.uniform(0.35, 0.5) if large else rng.uniform(0.12, 0.18)) * h)
    d = ImageDraw.Draw(img)
    while True:
        f = font(font_name, px)
        l, t, r, b = d.textbbox((0, 0), text, font=f)
        if r - l <= 0.9 * w or px <= 8:
            break
        px = int(px * 0.85)
    x, y = rng.randint(0, max(0, w - (r - l))) - l, rng.randint(0, max(0, h - (b - t))) - t
    d.text((x, y), text, font=f, fill=rgb)


def encode(frames, path: str, fps: int) -> None:
    """frames: an iterable of (image, how many video frames it lasts)."""
    import av

    with av.open(path, "w") as out:
        stream = None
        for img, repeat in frames:
            if stream is None:
                stream = out.add_stream("libx264", rate=fps, options={"crf": "23"})
                stream.width, stream.height, stream.pix_fmt = img.width, img.height, "yuv420p"
            frame = av.VideoFrame.from_image(img)
            for _ in range(repeat):
                out.mux(stream.encode(frame))
        out.mux(stream.encode())


def still(rng: random.Random, path: str) -> tuple[list[tuple[str, str, str]], dict]:
    """One item for 3-6 s; its questions as (type, question, expected)."""
    w, h = rng.choice(SIZES)
    fps = rng.choice(FPS)
    img = background(rng, w, h)
    colour = rng.choice(list(SHADES))
    rgb = rng.choice(SHADES[colour])
    kind = rng.choice(["shape", "shape", "digit", "word"])
    info = {"size": [w, h], "fps": fps, "colour": colour, "rgb": rgb, "kind": kind}
    if kind == "shape":
        shape = rng.choice(SHAPES)
        draw_shape(img, rng, shape, rgb)
        info["item"] = shape
        qs = [("colour_of_shape", rng.choice([f"What is the colour of the {shape}?", f"Which colour is the {shape}?",
                                               f"The {shape} is what colour?"]), colour),
              ("which_shape", rng.choice(["What shape is shown?", "Which shape do you see?",
                                          "Name the shape on the screen."]), shape)]
    else:
        text = rng.choice(DIGITS) if kind == "digit" else rng.choice(WORDS)
        font_name, large = rng.choice(FONTS), rng.random() < 0.5
        draw_text(img, rng, text, rgb, font_name, large)
        info.update(item=text, font=font_name, large=large)
        if kind == "digit":
            q = rng.choice(["What number is shown?", "Which digit is displayed?", "What number do you see?"])
        else:
            q = rng.choice(["What word is written?", "Read the word on the screen.", "What does the text say?"])
        noun = "number" if kind == "digit" else "text"
        qs = [(f"which_{kind}", q, text.lower()),
              ("colour_of_text", rng.choice([f"What colour is the {noun}?", f"In what colour is the {noun} written?"]),
               colour)]
    img = img.filter(ImageFilter.GaussianBlur(rng.choice([0, 0, 0.6])))
    encode([(img, int(rng.uniform(3, 6) * fps))], path, fps)
    return qs, info


def sequence(rng: random.Random, path: str) -> tuple[list[tuple[str, str, str]], dict]:
    """Three different shapes one after another (3 s each, 2 s of background between)."""
    w, h = rng.choice(SIZES)
    fps = rng.choice(FPS)
    bg = background(rng, w, h)
    shapes = rng.sample(SHAPES, 3)
    frames = [(bg, 2 * fps)]
    for shape in shapes:
        img = bg.copy()
        colour = rng.choice(list(SHADES))
        draw_shape(img, rng, shape, rng.choice(SHADES[colour]))
        frames += [(img, 3 * fps), (bg, 2 * fps)]
    encode(frames, path, fps)
    qs = [("first", rng.choice(["Which shape appears first?", "What is the first shape shown?"]), shapes[0]),
          ("last", rng.choice(["Which shape appears last?", "What is the last shape shown?"]), shapes[-1])]
    return qs, {"size": [w, h], "fps": fps, "shapes": shapes}


def needle(rng: random.Random, path: str, length_s: int, position: float, kind: str):
    """A 1-fps video of changing backgrounds, one item shown for 5 s at `position` of it."""
    w, h = 192, 144
    at = int(position * length_s)
    colour = rng.choice(list(SHADES))
    rgb = rng.choice(SHADES[colour])
    item_img = None

    def frames():
        nonlocal item_img
        t = 0
        while t < length_s:
            run = min(rng.randint(5, 20), length_s - t)
            bg = background(rng, w, h)
            for s in range(t, t + run):
                if at <= s < at + 5:
                    if item_img is None:
                        item_img = bg.copy()
                        if kind == "shape":
                            draw_shape(item_img, rng, shape, rgb)
                        else:
                            draw_text(item_img, rng, text, rgb, font_name, True)
                    yield item_img, 1
                else:
                    yield bg, 1
            t += run

    shape = rng.choice(SHAPES)
    text = rng.choice(DIGITS) if kind == "digit" else rng.choice(WORDS)
    font_name = rng.choice(FONTS)
    encode(frames(), path, 1)
    if kind == "shape":
        return ("needle_colour", f"What is the colour of the {shape}?", colour), {"item": shape}
    if kind == "digit":
        return ("needle_digit", "What number is shown?", text), {"item": text, "font": font_name}
    return ("needle_word", "What word is written?", text.lower()), {"item": text, "font": font_name}


VOCAB = [c for c in SHADES] + SHAPES + DIGITS + [w.lower() for w in WORDS]


def right(answer: str, expected: str) -> bool:
    """Names the expected value and no other value of the same vocabulary (digits also as words)."""
    words = re.findall(r"[a-z0-9]+", answer.lower())
    numbers = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9"}
    words = [numbers.get(x, x) for x in words]
    group = next(g for g in (list(SHADES), SHAPES, DIGITS, [x.lower() for x in WORDS]) if expected in g)
    named = {x for x in words if x in group}
    return named == {expected}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--sequences", type=int, default=12)
    parser.add_argument("--needles", default="1200:4,3600:2", help="LENGTH_S:COUNT,... (empty: none)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--quantize", default="auto", help="vidmini's --quantize (auto: what `vidmini ask` runs)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/other_renderer"))
    args = parser.parse_args(argv)
    import torch

    from vidmini.families.loading import LoadOptions, load_model
    from vidmini.jobs.ask import Sampling, run_ask

    model, tokenizer = load_model(LoadOptions(model=args.model, device="cpu", quantize=args.quantize))
    rng = random.Random(args.seed)
    rows = []

    def ask(path, qs, info):
        t0 = time.monotonic()
        out = run_ask(model, tokenizer, path, [q for _, q, _ in qs], model_name=args.model, sampling=Sampling(),
                      max_new_tokens=12, progress=False, use_cache=False)
        for (kind, q, expected), got in zip(qs, out["answers"]):
            rows.append({"type": kind, "question": q, "expected": expected, "answer": got["answer"],
                         "right": right(got["answer"], expected), "answer_s": round(time.monotonic() - t0, 1),
                         **info})
            print(json.dumps(rows[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.clips):
            qs, info = still(rng, f"{tmp}/still{i}.mp4")
            ask(f"{tmp}/still{i}.mp4", qs, info)
        for i in range(args.sequences):
            qs, info = sequence(rng, f"{tmp}/seq{i}.mp4")
            ask(f"{tmp}/seq{i}.mp4", qs, info)
        for spec in filter(None, args.needles.split(",")):
            length, count = (int(x) for x in spec.split(":"))
            for k in range(count):
                kind = ["shape", "digit", "word"][k % 3]
                qa, info = needle(rng, f"{tmp}/needle.mp4", length, (k + 0.5) / count, kind)
                ask(f"{tmp}/needle.mp4", [qa], {"length_s": length, "position": round((k + 0.5) / count, 2),
                                                **info})
    summary = {}
    for key in sorted({r["type"] for r in rows}):
        got = [r["right"] for r in rows if r["type"] == key]
        summary[key] = {"right": sum(got), "asked": len(got)}
    single = [r["right"] for r in rows if r["type"] in ("colour_of_shape", "which_shape", "which_digit", "which_word",
                                                         "colour_of_text")]
    summary["single-event"] = {"right": sum(single), "asked": len(single)}
    by_font = {}
    for r in rows:
        if "font" in r and r["type"] in ("which_digit", "which_word", "needle_digit", "needle_word"):
            by_font.setdefault(r["font"], []).append(r["right"])
    lines = [f"{'type':22s} right/asked  accuracy"]
    lines += [f"{k:22s} {v['right']:5d}/{v['asked']:<5d} {v['right'] / v['asked']:7.1%}" for k, v in summary.items()]
    lines += ["digits and words by font: " + ", ".join(f"{f} {sum(v)}/{len(v)}" for f, v in sorted(by_font.items()))]
    print("\n".join(lines))
    report = {"command": "python bench/other_renderer.py " + " ".join(argv or sys.argv[1:]), "model": args.model,
              "quantize": args.quantize,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()},
              "summary": summary, "by_font": {f: [sum(v), len(v)] for f, v in by_font.items()}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    Path(args.out + ".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
