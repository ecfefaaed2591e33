"""decord, the backend the product was specified with, run in a child process under a watchdog.

The package is `decord2` (the maintained fork of decord 0.6, same `import decord`, FFmpeg 8 with AV1); see
bench/decode.py for the comparison of both with PyAV. decord reads FFmpeg's "best" video stream (as vidmini's
probe does), applies the display rotation itself, and can stall for minutes on files with few keyframe flags, so
it runs where it can be killed. Each sampled time maps to the last frame whose timestamp is <= t, from decord's
own timestamp table (relative to the stream's start, like the plan's times).

The child decodes one sampled frame at a time and hands them on in small chunks; when decord fails part way, the
chunk it had is flushed first, so a fallback resumes at the first frame decord could not deliver.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from vidmini.inputs.video.frames import NEAREST, FrameGeometry, model_frame
from vidmini.inputs.video.plan import SamplingPlan
from vidmini.inputs.video.probe import VideoInfo

CHUNK = 8
_CPP_PREFIX = re.compile(r"(\[\d\d:\d\d:\d\d\] )?\S+\.(cc|h):\d+: ")
_PATH_PREFIX = re.compile(r"^\[[^\]]*\] ")


def clean_message(text: str) -> str:
    """decord's errors carry C++ source locations, timestamps and the path (the caller names it); keep the words."""
    text = _CPP_PREFIX.sub("", str(text).splitlines()[0] if str(text) else "")
    return _PATH_PREFIX.sub("", text.replace("Check failed: ", "").strip())[:200]


class DecoderFailed(Exception):
    """The backend could not deliver (refused the file, stalled, crashed or disagreed with the probe)."""


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("decord") is not None


@dataclass(frozen=True)
class Job:
    """What the child needs: picklable, no VideoInfo/plan objects (the child imports as little as it can)."""

    path: str
    mode: str  # "time" or "reference"
    wanted: np.ndarray  # seconds from the stream's start (time) or frame indices (reference)
    width: int  # display size the probe saw: decord must read the same stream
    height: int
    frames: int | None  # frame count in the header, when there is one
    geometry: FrameGeometry = FrameGeometry()  # the model's frame size and crop


def frame_indices(timestamps: np.ndarray, job: Job, count: int) -> np.ndarray:
    """decord frame index for each wanted sample; refuses timestamp tables it cannot trust."""
    if job.mode != "time":
        return np.minimum(job.wanted, count - 1)
    starts = timestamps[:, 0]
    # AVI gives decord no timestamps (it reports AV_NOPTS_VALUE scaled, about -3.7e17): mapping times onto them
    # would pick the last frame for every sample.
    if not np.all(np.isfinite(starts)) or starts.min() < -1.0 or np.any(np.diff(starts) < 0):
        raise DecoderFailed("no usable frame timestamps")
    # decord's timestamps are float32: a frame shown exactly at a sampled time (0.1 s -> 0.10000000149) would
    # look later than it and lose to the frame before. One float32 step of slack keeps "last start <= t" exact.
    slack = np.spacing(np.abs(job.wanted).astype(np.float32)).astype(np.float64)
    return np.clip(np.searchsorted(starts, job.wanted + slack, side="right") - 1, 0, count - 1)


def check_agrees(job: Job, count: int, shape: tuple) -> None:
    """decord must read the stream the probe described, or its frames answer another question."""
    if (shape[1], shape[0]) != (job.width, job.height):
        raise DecoderFailed(f"reads another stream ({shape[1]}x{shape[0]}, probe says {job.width}x{job.height})")
    if job.frames and abs(count - job.frames) > 1:
        raise DecoderFailed(f"counts {count} frames, the header says {job.frames}")


def resized_in_child(geometry: FrameGeometry) -> bool:
    """Whether the child resizes: the nearest-neighbour squares are numpy (cheap to import, small to send). The
    bicubic resize is torch's kernel, and importing torch in every decord child took longer than the stall timeout
    on a loaded machine; those frames cross full-size, one per message, and the parent resizes them."""
    return geometry.resize == NEAREST


def _decode(job: Job, out: mp.Queue) -> None:
    """Child body: ("frames", first position, [n, H, W, 3]) chunks, then ("done",) or ("error", message)."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    reader = decord.VideoReader(job.path, ctx=decord.cpu(0), num_threads=0)
    count = len(reader)
    indices = frame_indices(reader.get_frame_timestamp(np.arange(count)), job, count)
    pending: list[np.ndarray] = []
    first, previous, frame = 0, -1, None
    resize, chunk = (True, CHUNK) if resized_in_child(job.geometry) else (False, 1)
    try:
        for index in indices.tolist():
            if index != previous:  # VFR: one frame may cover several samples; decode it once
                picture = reader.get_batch([index]).asnumpy()[0]  # [H, W, 3], rotation applied
                if previous == -1:
                    check_agrees(job, count, picture.shape)
                frame, previous = (model_frame(picture, 0, job.geometry) if resize else picture), index
            pending.append(frame)
            if len(pending) == chunk:
                out.put(("frames", first, np.stack(pending)))
                first, pending = first + len(pending), []
    finally:
        if pending:  # what decord did deliver before failing still counts
            out.put(("frames", first, np.stack(pending)))
    out.put(("done", None))


def _worker(job: Job, out: mp.Queue) -> None:
    try:
        _decode(job, out)
    except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
        out.put(("error", clean_message(err)))


class DecordDecoder:
    def __init__(self, stall_timeout_s: float = 30.0, geometry: FrameGeometry = FrameGeometry()):
        self.stall_timeout_s, self.geometry = stall_timeout_s, geometry

    def frames(self, info: VideoInfo, plan: SamplingPlan,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, np.ndarray, float]]:
        """(plan position, frame, time) in plan order; DecoderFailed when decord cannot deliver."""
        if not available():
            raise DecoderFailed("decord is not installed")
        wanted = plan.times_s if plan.mode == "time" else plan.indices
        job = Job(info.path, plan.mode, np.asarray(wanted), info.display_width, info.display_height, info.frames,
                  self.geometry)
        ctx = mp.get_context("spawn")  # no fork: the parent may hold torch's thread pools
        out = ctx.Queue(maxsize=4)  # bounded: the child decodes at most a few chunks ahead
        child = ctx.Process(target=_worker, args=(job, out), daemon=True)
        child.start()
        try:
            resized = resized_in_child(self.geometry)
            for first, chunk in self._chunks(out, child, should_stop):
                for position, frame in enumerate(chunk, start=first):
                    frame = frame if resized else model_frame(frame, 0, self.geometry)
                    yield position, frame, _time(info, plan, position)
        finally:
            if child.is_alive():
                child.kill()
            child.join(timeout=5)

    def _chunks(self, out, child, should_stop) -> Iterator[tuple[int, np.ndarray]]:
        while True:
            kind, payload = self._next_message(out, child, should_stop)
            if kind == "error":
                raise DecoderFailed(payload)
            if kind == "done":
                return
            yield payload

    def _next_message(self, out, child, should_stop) -> tuple[str, object]:
        waited = 0.0
        while not should_stop():
            try:
                kind, *payload = out.get(timeout=0.25)
                return kind, tuple(payload) if kind == "frames" else payload[0]
            except queue.Empty:
                waited += 0.25
                if not child.is_alive() and out.empty():
                    raise DecoderFailed(f"decord's process died (exit {child.exitcode})")
                if waited >= self.stall_timeout_s:
                    raise DecoderFailed(f"decord stalled: no frame for {self.stall_timeout_s:g} s")
        return "done", None


def _time(info: VideoInfo, plan: SamplingPlan, position: int) -> float:
    if plan.times_s is not None:
        return float(plan.times_s[position])
    return float(plan.indices[position] / (info.fps or 1.0))
