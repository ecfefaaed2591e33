"""Sequential decoding with PyAV, by presentation time.

Frames come out of the decoder in presentation order; for each sampled time the frame on screen then (the last
one with pts <= t) is kept, and only kept frames are converted to RGB. Where the file is indexed and keyframes
are closer together than the sampling interval, the decoder jumps to the keyframe before the next sampled time
instead of decoding everything in between. MPEG-TS is never seeked (its seeks are unreliable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from vidmini.inputs.video.frames import DecodeReport, FrameGeometry, model_frame
from vidmini.inputs.video.plan import SamplingPlan
from vidmini.inputs.video.probe import VideoInfo, choose_stream, open_container

NO_SEEK_FORMATS = ("mpegts", "mpeg", "h264", "hevc", "ivf", "mjpeg")

Item = tuple[int, np.ndarray, float]  # (plan position, [S, S, 3] uint8, seconds from start)


def _one_thread() -> dict:
    """PyAV 17 added `threads` to reformat, and made 0 (automatic) the default: a new pool of swscale threads for
    every frame. One thread gives the same bits (the conversion is per row); PyAV before 17 always used one."""
    import av

    return {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


def rgb_converter() -> Callable:
    """to_rgb with one swscale context kept for every frame it converts (the context is set up again only when
    the frames' size or format change). PyAV's frame.to_ndarray(format=...) sets one up for each frame, which
    cost 0.55 ms of CPU on a 96x64 frame against 0.01 ms reused (bench: 2,000 frames). Not thread-safe: one per
    decoding thread."""
    from av.video.reformatter import VideoReformatter

    reformatter, threads = VideoReformatter(), _one_thread()

    def convert(frame) -> np.ndarray:
        """[H, W, 3] RGB, converted as decord (the reference's reader) converts: swscale with bicubic chroma
        upsampling. On even sizes swscale's unscaled path ignores the filter and PyAV's default (bilinear) gives
        the same bits; on odd sizes it does not (vp8_odd_175x143: max 63 levels apart, mean 3.0; bench/decode.py)."""
        return reformatter.reformat(frame, format="rgb24", interpolation="BICUBIC", **threads).to_ndarray()

    return convert


def to_rgb(frame) -> np.ndarray:
    """One frame to [H, W, 3] RGB as the decoders convert it (rgb_converter; decoders keep one for all frames)."""
    return rgb_converter()(frame)


class KeyframeSpacing:
    """Running estimate of the distance between keyframes, to decide when a seek saves work."""

    def __init__(self):
        self.last: float | None = None
        self.gaps: list[float] = []

    def see(self, time: float, key: bool) -> None:
        if not key:
            return
        if self.last is not None and time > self.last:
            self.gaps = (self.gaps + [time - self.last])[-8:]
        self.last = time

    def worth_seeking(self, distance: float) -> bool:
        # Jumping pays off when at least two keyframes lie ahead before the target.
        return bool(self.gaps) and distance > 2 * max(self.gaps)


def keyframe_gap_s(info: VideoInfo, span_s: float = 10.0) -> float:
    """Largest distance between the first keyframes of the stream, from packet flags (demuxed, never decoded, so
    it costs milliseconds). A stream with a single keyframe in its first `span_s` gets `span_s`: its GOP is at
    least that long."""
    container = open_container(info.path)
    try:
        stream = choose_stream(container, info.path)
        keys: list[float] = []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if packet.is_keyframe:
                keys.append(t)
            if len(keys) == 4 or (keys and t - keys[0] > span_s):
                break
    finally:
        container.close()
    return max(np.diff(keys)) if len(keys) > 1 else span_s


class PyAVDecoder:
    def __init__(self, threads: int = 0, allow_seek: bool = True, geometry: FrameGeometry = FrameGeometry()):
        self.threads, self.geometry = threads, geometry
        self.allow_seek = allow_seek

    def frames(self, info: VideoInfo, plan: SamplingPlan, report: DecodeReport, start_at: int = 0,
               stop_at: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[Item]:
        container = open_container(info.path)
        try:
            stream = choose_stream(container, info.path)
            stream.codec_context.thread_type = "AUTO"
            if self.threads:
                stream.codec_context.thread_count = self.threads
            stop_at = len(plan) if stop_at is None else stop_at
            rgb = rgb_converter()  # this call's own: parallel segments each convert in their own thread
            if plan.mode == "reference":
                yield from self._by_index(container, stream, info, plan, report, start_at, stop_at, should_stop, rgb)
            else:
                yield from self._by_time(container, stream, info, plan, report, start_at, stop_at, should_stop, rgb)
        finally:
            container.close()

    def can_seek(self, info: VideoInfo) -> bool:
        return self.allow_seek and not any(f in info.container.split(",") for f in NO_SEEK_FORMATS)

    def _by_time(self, container, stream, info, plan, report, start_at, stop_at, should_stop, rgb) -> Iterator[Item]:
        targets = info.start_s + plan.times_s  # absolute presentation times
        rotation = info.rotation
        seekable = self.can_seek(info)
        spacing = KeyframeSpacing()
        i = start_at
        held = held_rgb = None
        held_t = None
        if start_at > 0 and seekable:
            _seek(container, stream, targets[i])
        while i < stop_at:
            jumped = False
            for frame in _decoded(container, stream, report, should_stop):
                t = frame.time if frame.time is not None else (held_t or info.start_s)
                if held_t is not None and t < held_t:
                    # Decoders emit frames in display order, but some containers (AVI with B-frames) label them
                    # with swapped timestamps; keep the clock monotonic (at most one frame off).
                    t = held_t
                while i < stop_at and targets[i] < t:
                    if held is None:  # the sampled time precedes the first frame: show the first frame
                        held, held_t, held_rgb = frame, t, None
                    if held_rgb is None:  # convert once, however many sampled times the frame covers
                        held_rgb = model_frame(rgb(held), rotation, self.geometry)
                    yield i, held_rgb, float(plan.times_s[i])
                    i += 1
                if frame is not held:
                    held, held_t, held_rgb = frame, t, None
                spacing.see(t, frame.key_frame)
                if i < stop_at and seekable and spacing.worth_seeking(targets[i] - t):
                    before = t
                    _seek(container, stream, targets[i])
                    first = next(_decoded(container, stream, report, should_stop), None)
                    if first is None or (first.time or 0) <= before:
                        seekable = False  # the seek went backwards: the index is useless, decode straight on
                        _seek(container, stream, before)
                    held, held_t, held_rgb = (first, first.time, None) if first is not None else (None, None, None)
                    jumped = True
                    break
            if not jumped:
                break
        yield from self._tail(held, held_t, held_rgb, targets, plan, info, report, i, stop_at, rgb)

    def _tail(self, held, held_t, held_rgb, targets, plan, info, report, i, stop_at, rgb) -> Iterator[Item]:
        """Sampled times after the last frame: its own display time still counts, beyond is missing."""
        frame_time = 1.0 / info.fps if info.fps else 0.1
        while i < stop_at and held is not None and targets[i] < held_t + max(frame_time, 1.0 / plan.fps):
            if held_rgb is None:
                held_rgb = model_frame(rgb(held), info.rotation, self.geometry)
            yield i, held_rgb, float(plan.times_s[i])
            i += 1
        if i < stop_at:
            report.missing += stop_at - i
            t = float(plan.times_s[i])
            report.first_missing_s = t if report.first_missing_s is None else min(report.first_missing_s, t)

    def _by_index(self, container, stream, info, plan, report, start_at, stop_at, should_stop, rgb) -> Iterator[Item]:
        wanted = plan.indices
        i, k = start_at, 0
        for frame in _decoded(container, stream, report, should_stop):
            if i >= stop_at:
                break
            if wanted[i] == k:
                picture = model_frame(rgb(frame), info.rotation, self.geometry)
                t = (frame.time - info.start_s) if frame.time is not None else k / (info.fps or 1)
                while i < stop_at and wanted[i] == k:  # repeated indices repeat the frame
                    yield i, picture, float(t)
                    i += 1
            k += 1
        if i < stop_at:  # planned frames past the last decodable one: from the first of them on, in seconds
            report.missing += stop_at - i
            t = float(wanted[i]) / (info.fps or 1)
            report.first_missing_s = t if report.first_missing_s is None else min(report.first_missing_s, t)


def _seek(container, stream, target_s: float) -> None:
    container.seek(max(0, int(target_s / stream.time_base)), stream=stream, backward=True, any_frame=False)


def _decoded(container, stream, report: DecodeReport, should_stop):
    """Frames in presentation order; packets FFmpeg rejects are counted and skipped."""
    import av

    for packet in container.demux(stream):
        if should_stop():
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            report.bad_packets += 1
            continue
        yield from frames
