"""Timelines to pixels and files: frames at chosen times, H.264 round trips, and mp4 files for tests and benches."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from vidmini.demo.render import draw_background, render
from vidmini.demo.timeline import Timeline


def encode_h264(frames: list[np.ndarray] | np.ndarray, fps: float, crf: int = 23, preset: str = "veryfast",
                out=None) -> bytes | None:
    """[T, H, W, 3] uint8 (even H and W) -> an H.264 mp4 in memory (returned) or written to `out` (a path)."""
    import av

    target = out if out is not None else io.BytesIO()
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target.getvalue() if out is None else None


def decode_all(data: bytes) -> list[np.ndarray]:
    import av

    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def h264_roundtrip(frames: np.ndarray, crf: int, fps: float = 1.0) -> np.ndarray:
    """What a video's compression does to these frames: encode them as one clip and decode it back."""
    return np.stack(decode_all(encode_h264(frames, fps, crf)))


def write_video(timeline: Timeline, path: str, fps: float = 1.0, width: int = 160, height: int = 160,
                crf: int = 23, noise: float = 0.0) -> str:
    """The timeline as an H.264 mp4 at `fps`. Backgrounds are drawn once per scene, so hours at 1 fps take seconds."""
    import av

    n = int(round(timeline.duration * fps))
    backgrounds: dict[int, object] = {}
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i in range(n):
            t = (i + 0.5) / fps  # the middle of the frame's interval, where 1-fps sampling looks
            scene = timeline.scene_at(t)
            if id(scene) not in backgrounds:
                backgrounds = {id(scene): draw_background(scene, width, height)}
            pixels = render(timeline, t, width, height, noise=noise, background=backgrounds[id(scene)])
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
