"""Generated videos whose frames say which frame they are, for tests, benchmarks and sample_videos/.

Each frame shows its index as a row of black/white blocks (bit 0 on the left) across the top quarter, a background
colour that changes every `scene_s` seconds, and a white square moving left to right. Blocks are large, so the
code survives lossy compression and the nearest-neighbour squash to 336x336.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

BITS = 16
SCENE_COLOURS = [(200, 40, 40), (40, 170, 60), (40, 70, 200), (220, 200, 40), (150, 60, 170), (40, 180, 190)]
COLOUR_NAMES = ["red", "green", "blue", "yellow", "purple", "cyan"]


def scene_colour(t: float, scene_s: float) -> tuple[int, int, int]:
    return SCENE_COLOURS[int(t // scene_s) % len(SCENE_COLOURS)]


def draw_frame(index: int, t: float, width: int, height: int, scene_s: float, square: bool = True) -> np.ndarray:
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = scene_colour(t, scene_s)
    band = max(2, height // 4)
    edges = np.linspace(0, width, BITS + 1).astype(int)
    for bit in range(BITS):
        img[:band, edges[bit] : edges[bit + 1]] = 255 if (index >> bit) & 1 else 0
    if square:
        side = max(2, height // 5)
        x = int((t * 0.1 % 1.0) * max(1, width - side))
        y = band + (height - band - side) // 2
        img[y : y + side, x : x + side] = 255
    return img


def read_index(frame: np.ndarray) -> int:
    """The index coded in a (possibly squashed) frame."""
    band = frame[: max(1, frame.shape[0] // 8)].mean(axis=(0, 2))  # [W] brightness of the code rows
    edges = np.linspace(0, frame.shape[1], BITS + 1).astype(int)
    value = 0
    for bit in range(BITS):
        lo, hi = edges[bit], edges[bit + 1]
        centre = band[lo + (hi - lo) // 4 : hi - (hi - lo) // 4]
        value |= int(centre.mean() > 127) << bit
    return value


def make_video(path: str, seconds: float, fps: float = 1.0, width: int = 96, height: int = 64, codec: str = "libx264",
               gop: int | None = None, scene_s: float = 10.0, crf: int = 18, preset: str = "ultrafast",
               threads: int = 0) -> str:
    """Write a video of `seconds` at `fps`; H.264 by default. Returns the path."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    count = int(round(seconds * fps))
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "mjpeg":
            stream.pix_fmt = "yuvj420p"
        options = {"crf": str(crf), "preset": preset} if codec == "libx264" else {}
        if gop:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                options["keyint_min"] = str(gop)
        if threads:
            stream.codec_context.thread_count = threads
        stream.options = options
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, i / fps, width, height, scene_s), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
