"""What is in a video file, read with PyAV: the stream vidmini uses, its geometry, timing and rotation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction

from vidmini.errors import BadInput
from vidmini.inputs.paths import check_input_file


class VideoError(BadInput):
    """A video that cannot be used (exit code 3). The message is one line, meant for the user."""


@dataclass
class VideoInfo:
    path: str
    container: str
    stream_index: int
    codec: str
    width: int
    height: int
    rotation: int  # degrees counter-clockwise to turn the stored picture to display it (PyAV's convention)
    start_s: float  # presentation time of the stream's first frame
    duration_s: float
    duration_source: str  # "container", "stream" or "last timestamp"
    frames: int | None  # frame count stored in the header, when there is one
    fps: float | None  # average frame rate, when known
    video_streams: int = 1
    audio_streams: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def display_width(self) -> int:
        return self.height if self.rotation % 180 else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation % 180 else self.height

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(display_width=self.display_width, display_height=self.display_height)
        return d


def open_container(path: str):
    """av.open with the failure modes turned into one-line VideoErrors."""
    import av

    # PyAV keeps FFmpeg's logging off by default. Never set a level here: that routes FFmpeg's logs through
    # Python's logging, which deadlocks container.close() with frame-threaded decoding (PyAV issue #751).
    try:
        check_input_file(path)  # a URL, a FIFO (open() would block), a device, unreadable or empty: one line
    except BadInput as err:
        raise VideoError(str(err)) from None
    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise VideoError(f"{path}: not a readable video (FFmpeg finds no valid container; truncated or not a video?)")
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: cannot be opened ({_reason(err)})")


def _reason(err: Exception) -> str:
    return str(getattr(err, "strerror", None) or err).splitlines()[0][:200]


def _is_cover_art(stream) -> bool:
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def choose_stream(container, path: str):
    """FFmpeg's best video stream (av_find_best_stream, the one decord reads too), never an attached picture."""
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    if not videos:
        if list(container.streams.video):
            raise VideoError(f"{path}: no video stream, only a cover picture (an audio file?)")
        kind = "audio only" if list(container.streams.audio) else "no streams FFmpeg can read"
        raise VideoError(f"{path}: no video stream ({kind})")
    best = container.streams.best("video")
    return best if best is not None and best in videos else videos[0]


def _seconds(value, time_base) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def first_frame(container, stream):
    """The first decodable frame (its rotation is only known from a decoded frame), skipping bad packets."""
    import av

    for packet in container.demux(stream):
        try:
            for frame in packet.decode():
                return frame
        except av.error.FFmpegError:
            continue
    try:
        for frame in stream.codec_context.decode(None):
            return frame
    except av.error.FFmpegError:
        pass
    return None


def last_timestamp(container, stream) -> float | None:
    """End of the last packet, by demuxing (no decoding): for files whose header has no duration."""
    end = None
    container.seek(0)
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
        end = t if end is None else max(end, t)
    return end


def probe(path: str) -> VideoInfo:
    container = open_container(path)
    try:
        return _probe_open(container, path)
    finally:
        container.close()


def _probe_open(container, path: str) -> VideoInfo:
    stream = choose_stream(container, path)
    stream.codec_context.thread_type = "AUTO"
    frame = first_frame(container, stream)
    if frame is None:
        raise VideoError(f"{path}: no frame of the video stream could be decoded")
    tb = stream.time_base
    start = _seconds(stream.start_time, tb)
    if start is None:
        start = frame.time if frame.time is not None else (container.start_time or 0) / 1e6
    notes = []
    duration, source = None, ""
    if container.duration:
        container_start = (container.start_time or 0) / 1e6
        duration, source = container.duration / 1e6 - max(0.0, start - container_start), "container"
    elif stream.duration:
        duration, source = _seconds(stream.duration, tb), "stream"
    else:
        end = last_timestamp(container, stream)
        if end is not None:
            duration, source = end - start, "last timestamp"
            notes.append("no duration in the header; measured from the last timestamp")
    if not duration or duration <= 0:
        raise VideoError(f"{path}: the video's duration cannot be determined")
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        path=path, container=container.format.name, stream_index=stream.index,
        codec=stream.codec_context.name, width=stream.width, height=stream.height,
        rotation=int(frame.rotation or 0), start_s=float(start), duration_s=float(duration), duration_source=source,
        frames=stream.frames or None, fps=float(Fraction(rate)) if rate else None,
        video_streams=len([s for s in container.streams.video if not _is_cover_art(s)]),
        audio_streams=len(container.streams.audio), notes=notes,
    )
