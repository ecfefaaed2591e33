"""decord, the backend the product was specified with, run in a child process under a watchdog.

decord reads FFmpeg's "best" video stream (as vidmini's probe does), applies the display rotation itself, and can
stall for minutes on files with few keyframe flags, so it runs where it can be killed. Each sampled time maps to
the last frame whose timestamp is <= t, from decord's own timestamp table.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import re
from collections.abc import Callable, Iterator

import numpy as np

from vidmini.video.frames import DecodeReport, model_frame
from vidmini.video.plan import SamplingPlan
from vidmini.video.probe import VideoInfo

CHUNK = 16
_CPP_PREFIX = re.compile(r"(\[\d\d:\d\d:\d\d\] )?\S+\.(cc|h):\d+: ")


def clean_message(text: str) -> str:
    """decord's errors carry C++ source locations and timestamps; keep the words."""
    text = _CPP_PREFIX.sub("", str(text).splitlines()[0] if str(text) else "")
    return text.replace("Check failed: ", "").strip()[:200]


class DecoderFailed(Exception):
    """The backend could not deliver (refused the file, stalled, crashed or disagreed with the probe)."""


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("decord") is not None


def _worker(path: str, mode: str, wanted: np.ndarray, width: int, height: int, frames: int | None,
            out: mp.Queue) -> None:
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
        count = len(reader)
        shape = reader[0].shape
        if (shape[1], shape[0]) != (width, height) or (frames and abs(count - frames) > 1):
            out.put(("error", f"reads another stream ({shape[1]}x{shape[0]}, {count} frames)"))
            return
        if mode == "time":
            starts = reader.get_frame_timestamp(np.arange(count))[:, 0]
            indices = np.clip(np.searchsorted(starts, wanted, side="right") - 1, 0, count - 1)
        else:
            indices = np.minimum(wanted, count - 1)
        out.put(("ready", count))
        for lo in range(0, len(indices), CHUNK):
            batch = reader.get_batch(indices[lo : lo + CHUNK]).asnumpy()  # [b, H, W, 3], rotation applied
            out.put(("frames", lo, np.stack([model_frame(f, 0) for f in batch])))
        out.put(("done", None))
    except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
        out.put(("error", clean_message(err)))


class DecordDecoder:
    name = "decord"

    def __init__(self, stall_timeout_s: float = 30.0):
        self.stall_timeout_s = stall_timeout_s

    def frames(self, info: VideoInfo, plan: SamplingPlan, report: DecodeReport, start_at: int = 0,
               stop_at: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple]:
        if not available():
            raise DecoderFailed("decord is not installed")
        stop_at = len(plan) if stop_at is None else stop_at
        self.video_fps = info.fps or 1.0
        wanted = (plan.times_s if plan.mode == "time" else plan.indices)[start_at:stop_at]
        ctx = mp.get_context("spawn")  # no fork: the parent may hold torch's thread pools
        out = ctx.Queue(maxsize=4)  # bounded: the child decodes at most a few chunks ahead
        child = ctx.Process(target=_worker, daemon=True,
                            args=(info.path, plan.mode, np.asarray(wanted), info.display_width,
                                  info.display_height, info.frames, out))
        child.start()
        try:
            yield from self._receive(out, child, plan, start_at, should_stop)
        finally:
            if child.is_alive():
                child.kill()
            child.join(timeout=5)

    def _next_message(self, out, child, should_stop):
        waited = 0.0
        while not should_stop():
            try:
                return out.get(timeout=0.25)
            except queue.Empty:
                waited += 0.25
                if not child.is_alive() and out.empty():
                    raise DecoderFailed(f"decord's process died (exit {child.exitcode})")
                if waited >= self.stall_timeout_s:
                    raise DecoderFailed(f"decord stalled: no frame for {self.stall_timeout_s:.0f} s")
        return ("done", None)

    def _receive(self, out, child, plan, start_at, should_stop):
        while True:
            kind, *payload = self._next_message(out, child, should_stop)
            if kind == "error":
                raise DecoderFailed(payload[0])
            if kind == "done":
                return
            if kind == "frames":
                lo, frames = payload
                for j, frame in enumerate(frames):
                    position = start_at + lo + j
                    t = float(plan.times_s[position]) if plan.times_s is not None else float(
                        plan.indices[position] / self.video_fps)
                    yield position, frame, t
