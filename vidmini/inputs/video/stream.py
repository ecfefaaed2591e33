"""Frames for the model, decoded ahead in a worker thread, in bounded memory.

FrameStream walks the sampling plan in order and yields FrameBatches. A worker thread decodes into a bounded
queue (a few small batches), so decoding overlaps the model's work and never runs unboundedly ahead. Long files
that can be seeked are decoded as time segments in parallel threads (PyAV releases the GIL while decoding), each
segment with its own bounded queue, read back in order.

`auto` picks the backend per file (see `choose_backend`) and falls back to PyAV from the first frame not yet
delivered when the chosen one fails, stalls or disagrees with the probe.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vidmini.inputs.video.decord_decoder import DecordDecoder, DecoderFailed
from vidmini.inputs.video.decord_decoder import available as decord_available
from vidmini.inputs.video.frames import DecodeReport, FrameBatch, FrameGeometry
from vidmini.inputs.video.plan import SamplingPlan
from vidmini.inputs.video.probe import VideoError, VideoInfo
from vidmini.inputs.video.pyav_decoder import PyAVDecoder, keyframe_gap_s

_DONE = object()


@dataclass
class StreamOptions:
    decoder: str = "auto"  # auto | pyav | decord
    batch_size: int = 8
    queue_batches: int = 4
    workers: int = 1  # parallel PyAV time segments (threads); 1 = one frame-threaded decoder (measured faster here)
    stall_timeout_s: float = 60.0  # no decoded frame for this long (while there is room to put it) = a stall
    # decord alone gets less: it stalls for minutes on some files (MPEG-TS with few keyframe flags), and auto must
    # give up on it and fall back before the stream as a whole counts a stall.
    decord_stall_s: float = 10.0
    min_parallel_frames: int = 64  # below this, one decoder is as fast as several
    geometry: FrameGeometry = FrameGeometry()  # the model's frame size and crop


# Where decord was measured faster than PyAV (bench/decode.py; see choose_backend). Nowhere else is it used by auto.
DECORD_CODECS = ("h264",)
DECORD_CONTAINERS = ("mov,mp4,m4a,3gp,3g2,mj2",)
DECORD_MIN_FRAMES = 60  # its child process costs 0.2-0.5 s to start: short plans lose (every corpus file did)
DECORD_MIN_PIXELS = 1280 * 720  # at 768x432 (139 frames) PyAV still won
# Keyframes this many sampling intervals apart or more: PyAV cannot skip any frame (it jumps only past two keyframe
# gaps), and decord2 was faster. With keyframes 0.4 intervals apart PyAV skips, and decord2 took ~1.4x as long.
DECORD_MIN_KEYFRAME_GAP = 2.0


def choose_backend(info: VideoInfo, plan: SamplingPlan, requested: str,
                   options: StreamOptions | None = None) -> tuple[str, str]:
    """(backend, why). From `python bench/decode.py` on this project's 2-core machine (bench/results/decode.md;
    others' work ran alongside, so the bench ran at nice -15, best of 2 runs, same-run ratios):

    - 60 s of 1280x720 H.264 in MP4 at 1 fps, 2 s GOP (PyAV cannot skip a frame): decord2 6.6 / 6.9 / 6.8 / 6.5 s
      over two benchmark runs, PyAV 7.2 / 8.9 / 6.5 / 8.1 s: about 10% faster at the median, for the same CPU time
      (5.6 s) and about twice the memory (265 vs 144 MB). decord 0.6 was in between. Unniced, under load average
      10, decord2 6.2 s vs PyAV 10.4 s.
    - The same with 0.4 s GOPs, where PyAV jumps from keyframe to keyframe: PyAV 6.6 / 7.8 / 6.4 / 7.6 s, decord2
      10.4 / 10.9 / 9.0 / 7.3 s.
    - Every corpus file, all shorter or smaller, was faster with PyAV (139 s at 768x432: 1.3 s vs 2.8 s):
      starting decord's process and reader costs 0.2-0.5 s.
    - decord refuses or stalls on files PyAV reads (MKV/WebM without duration, IVF, AVI, MPEG-TS with few keyframe
      flags) and mis-seeks in HEVC, so auto uses it only for H.264 in MP4/MOV of at least 720p, 60 sampled frames
      and keyframes two sampling intervals apart, and PyAV takes over from the first frame not delivered when
      it fails or stalls (DecodeReport.fallbacks).

    Segments run in parallel only when asked for (--decode-workers): they lost to one decoder on 2 cores."""
    if requested == "pyav":
        return "pyav", "asked for"
    if requested == "decord":
        if not decord_available():
            raise VideoError("--decoder decord: decord is not installed (pip install decord2)")
        return "decord", "asked for"
    if requested != "auto":
        raise VideoError(f"unknown decoder {requested!r}; use auto, pyav or decord")
    if plan.mode == "reference":
        return "pyav", "reference sampling counts frames in decode order (sequential)"
    options = options or StreamOptions()
    if _parallel_ok(info, plan, options):
        return "pyav-parallel", f"long seekable file: {_workers(options)} segments in parallel"
    if _decord_faster(info, plan):
        return "decord", ("long H.264 MP4 of 720p or more with sparse keyframes: decord measured faster; PyAV takes "
                          "over if it fails")
    return "pyav", "sequential decode is fastest at this length" if PyAVDecoder().can_seek(info) else \
        f"{info.container} is not seeked (unreliable), decoded sequentially"


def _decord_faster(info: VideoInfo, plan: SamplingPlan) -> bool:
    if not (decord_available() and plan.mode == "time" and info.codec in DECORD_CODECS
            and info.container in DECORD_CONTAINERS and len(plan) >= DECORD_MIN_FRAMES
            and info.width * info.height >= DECORD_MIN_PIXELS):
        return False
    interval = float(np.median(np.diff(plan.times_s)))
    return keyframe_gap_s(info) >= DECORD_MIN_KEYFRAME_GAP * interval  # demuxes a few packets: checked last


def _workers(options: StreamOptions) -> int:
    return options.workers if options.workers > 0 else max(1, min(8, os.cpu_count() or 1))


def _parallel_ok(info: VideoInfo, plan: SamplingPlan, options: StreamOptions) -> bool:
    return (plan.mode == "time" and _workers(options) > 1 and len(plan) >= options.min_parallel_frames
            and PyAVDecoder().can_seek(info))


class FrameStream:
    def __init__(self, info: VideoInfo, plan: SamplingPlan, options: StreamOptions | None = None):
        self.info, self.plan = info, plan
        self.options = options or StreamOptions()
        self.report = DecodeReport()
        self.backend, self.why = choose_backend(info, plan, self.options.decoder, self.options)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=self.options.queue_batches)
        self._thread: threading.Thread | None = None
        self._progress = time.monotonic()  # last time the decoder produced a frame

    # ---- consumer side --------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[FrameBatch]:
        self._thread = threading.Thread(target=self._produce, name="vidmini-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._next()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def _next(self):
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                stalled = time.monotonic() - self._progress
                if stalled > self.options.stall_timeout_s:
                    raise VideoError(f"{self.info.path}: decoding stalled (no frame for {stalled:.0f} s)")

    def close(self) -> None:
        self._stop.set()
        while self._thread is not None and self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass

    # ---- producer side --------------------------------------------------------------------------------------
    def _put(self, item) -> bool:
        return _put_unless_stopped(self._queue, item, self._stop, on_wait=self._note_waiting)

    def _note_waiting(self) -> None:
        self._progress = time.monotonic()  # waiting on the consumer is not a stall

    def _produce(self) -> None:
        try:
            size = self.options.batch_size
            frames, times, positions = [], [], []
            for position, frame, t in self._items():
                self._progress = time.monotonic()
                frames.append(frame), times.append(t), positions.append(position)
                if len(frames) == size:
                    if not self._put(FrameBatch(np.stack(frames), np.array(times), np.array(positions))):
                        return
                    frames, times, positions = [], [], []
            if frames:
                self._put(FrameBatch(np.stack(frames), np.array(times), np.array(positions)))
            if positions == [] and self.report.missing == len(self.plan):
                raise VideoError(f"{self.info.path}: no frame of the video stream could be decoded")
            self._put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)

    def _items(self) -> Iterator[tuple]:
        """(position, frame, time) in plan order, from the chosen backend, falling back to PyAV on failure."""
        delivered = 0
        if self.backend == "decord":
            try:
                for item in DecordDecoder(self.options.decord_stall_s, self.options.geometry).frames(self.info, self.plan,
                                                                                should_stop=self._stop.is_set):
                    delivered = item[0] + 1
                    yield item
                self.report.decoder = "decord"
                return
            except DecoderFailed as err:
                if self.options.decoder == "decord":
                    raise VideoError(f"{self.info.path}: decord failed: {err}")
                self.report.fallbacks.append(f"decord -> pyav at frame {delivered}: {err}")
                self._progress = time.monotonic()  # the time decord spent is not PyAV's stall
        if self.backend == "pyav-parallel" and delivered == 0:
            self.report.decoder = "pyav-parallel"
            yield from self._parallel()
            return
        self.report.decoder = "pyav"
        yield from PyAVDecoder(geometry=self.options.geometry).frames(self.info, self.plan, self.report, start_at=delivered,
                                        should_stop=self._stop.is_set)

    def _parallel(self) -> Iterator[tuple]:
        """Time segments decoded by parallel threads, each into its own bounded queue, yielded in order."""
        bounds = np.linspace(0, len(self.plan), _workers(self.options) + 1).astype(int)
        segments = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        queues = [queue.Queue(maxsize=self.options.batch_size * self.options.queue_batches) for _ in segments]

        def run(segment, out):
            try:
                for item in PyAVDecoder(threads=1, geometry=self.options.geometry).frames(self.info, self.plan, self.report, *segment,
                                                          should_stop=self._stop.is_set):
                    if not _put_unless_stopped(out, item, self._stop):
                        return
                out.put(_DONE)
            except BaseException as err:
                out.put(err)

        threads = [threading.Thread(target=run, args=(s, q), daemon=True) for s, q in zip(segments, queues)]
        for t in threads:
            t.start()
        for out in queues:
            while True:
                item = _get_unless_stopped(out, self._stop)
                if item is _DONE or item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item


def _put_unless_stopped(q: queue.Queue, item, stop: threading.Event, on_wait=None) -> bool:
    """Put into a bounded queue, waiting while it is full; give up (False) once `stop` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if on_wait is not None:
                on_wait()
    return False


def _get_unless_stopped(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def decode_all(info: VideoInfo, plan: SamplingPlan, options: StreamOptions | None = None) -> tuple[np.ndarray, FrameStream]:
    """Every sampled frame in one array (short videos and tests only). Returns (frames [N, H, W, 3], stream)."""
    stream = FrameStream(info, plan, options)
    batches = list(stream)
    empty = np.zeros((0, *stream.options.geometry.frame_shape), np.uint8)
    frames = np.concatenate([b.frames for b in batches]) if batches else empty
    return frames, stream
