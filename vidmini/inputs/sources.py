"""The inputs of a job: a video (probed, planned, decoded or read from the frame cache) or an image, as a Source
that yields FrameBatches. Used by `ask`, `summarize` and the dry run; imports no model code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vidmini.inputs.cache import FrameCache
from vidmini.engine.capacity import Capacity, available_ram
from vidmini.inputs.paths import check_input_file, is_image
from vidmini.inputs.video import DecodeReport, FrameBatch, FrameStream, SamplingPlan, StreamOptions, VideoError, VideoInfo
from vidmini.inputs.video import make_plan, probe
from vidmini.inputs.video.frames import FrameGeometry, model_frame



@dataclass
class Sampling:
    mode: str = "time"
    fps: float = 1.0
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None


@dataclass
class Source:
    path: str
    kind: str  # "video" | "image"
    total: int  # frames the model will see
    duration_s: float | None
    batches: Callable[[], Iterator[FrameBatch]]
    report: DecodeReport = field(default_factory=DecodeReport)
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False
    decoder: str = ""
    times_s: np.ndarray | None = None  # planned sample times (video sources)
    cache: FrameCache | None = None
    geometry: FrameGeometry | None = None  # the frames' size and resize (image sources; a video's is its stream's)


def check_input(path: str, sampling: Sampling | None = None) -> None:
    """Fail fast (exit 2 or 3) on an input that cannot be used, before anything slow (a model load) starts; for a
    video with `sampling`, its plan too (--start/--end against the probed duration)."""
    if not is_image(path):
        plan_video(path, sampling) if sampling is not None else probe(path)
        return
    check_input_file(path, "image file")
    from PIL import UnidentifiedImageError

    try:
        with _open_image(path) as image:
            _check_decodable(path, image)
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL reports some broken files as SyntaxError
        raise VideoError(f"{path}: not a readable image ({err})")


REDUCED_SIDE = 2048  # images over Pillow's pixel limit are decoded down to this (the model sees 336-384 pixels)
DECODE_SHARE = 4  # an image may take at most 1/4 of the available RAM while it is decoded


def _open_image(path: str):
    """Image.open, lazily (the header only), without Pillow's decompression-bomb refusal: vidmini reads large
    images reduced (read_image) and refuses only those whose decode would not fit in memory (_check_decodable)."""
    import warnings

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _check_decodable(path: str, image) -> None:
    from PIL import Image

    if image.format == "JPEG":  # JPEG decodes at 1/2, 1/4 or 1/8 scale directly: a huge one costs little
        image.draft("RGB", (REDUCED_SIDE, REDUCED_SIDE))
    w, h = image.size
    needed = w * h * max(3, len(image.getbands()))
    allowed = available_ram() // DECODE_SHARE
    if w * h > (Image.MAX_IMAGE_PIXELS or 0) and needed > allowed:
        raise VideoError(f"{path}: a {w}x{h} image needs {needed / 1e9:.1f} GB to decode, more than the "
                         f"{allowed / 1e9:.1f} GB vidmini allows itself here; downscale it first")


def read_image(path: str):
    """(RGB image as it is meant to be seen, frame count): EXIF orientation applied (as a video's rotation is);
    an image over Pillow's pixel limit decoded reduced to REDUCED_SIDE (JPEG straight from the file, others by
    Pillow's reduce), so a 15,000 x 15,000 photo is read rather than refused."""
    from PIL import Image, ImageOps

    with _open_image(path) as image:
        frames = getattr(image, "n_frames", 1)
        _check_decodable(path, image)
        if image.size[0] * image.size[1] > (Image.MAX_IMAGE_PIXELS or 0):
            image.thumbnail((REDUCED_SIDE, REDUCED_SIDE), reducing_gap=2.0)
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB"), frames


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of the image as `open_image` reads it (upright, reduced if huge): the size a family's
    frame geometry is chosen from (the dry run's, without a model)."""
    return read_image(path)[0].size


def open_image(path: str, model=None, geometry: FrameGeometry | None = None) -> Source:
    """An image as a one-frame source: the model's own image path where its family has one (FrameModel.image_frame:
    LLaVA-Mini pads or crops as the reference), else one frame of a video at `geometry` (by default the one the
    model gives a video of the image's size, FrameModel.geometry_for)."""
    from PIL import UnidentifiedImageError

    check_input_file(path, "image file")
    try:
        image, frames = read_image(path)
    except (UnidentifiedImageError, OSError) as err:
        raise VideoError(f"{path}: not a readable image ({err})")
    pixels = model.image_frame(image) if model is not None else None
    geometry = geometry or (model.geometry_for(*image.size) if model is not None else FrameGeometry())
    if pixels is None:
        pixels = model_frame(np.asarray(image), 0, geometry)
    notes = [f"{path} is an animated image of {frames} frames: the model sees its first frame only "
             "(convert it to a video to ask about all of them)"] if frames > 1 else []
    batch = FrameBatch(pixels[None], np.zeros(1), np.zeros(1, dtype=np.int64))
    return Source(path, "image", 1, None, lambda: iter([batch]), notes=notes, decoder="pillow", geometry=geometry)


@dataclass
class VideoPlan:
    info: VideoInfo
    plan: SamplingPlan
    fps: float  # the rate actually sampled
    notes: list[str]


def plan_video(path: str, sampling: Sampling) -> VideoPlan:
    """Probe and plan, before any capacity limit. A sampling rate above the stream's own frame rate would only
    repeat frames (40,000 copies of a 40 s clip at --fps 1000), so it is capped at that rate, and the user told."""
    info = probe(path)
    fps, notes = sampling.fps, list(info.notes)
    if sampling.mode == "time" and info.fps and fps > info.fps:
        notes.append(f"--fps {fps:g} is above the video's own {info.fps:.3g} frames per second; sampling at "
                     f"{info.fps:.3g} (more would repeat frames)")
        fps = info.fps
    plan = make_plan(info, sampling.mode, fps, sampling.max_frames, sampling.start, sampling.end)
    return VideoPlan(info, plan, fps, notes)


def open_video(planned: VideoPlan, sampling: Sampling, capacity: Capacity, stream: StreamOptions,
               use_cache: bool) -> Source:
    """The planned video as a Source of at most `capacity` frames (fewer, spread over the whole range, and said)."""
    info, plan, notes = planned.info, planned.plan, planned.notes
    path = info.path
    limit, why = capacity.frames, capacity.reason
    if len(plan) > limit:
        wanted = len(plan)
        if sampling.mode == "reference":
            raise VideoError(f"{path}: {wanted} frames do not fit ({why}: {limit}); use --sampling time or --max-frames")
        plan = make_plan(info, "time", planned.fps, limit, sampling.start, sampling.end)
        notes.append(f"{wanted} frames at {planned.fps:g} fps do not fit ({why}); using {len(plan)} frames spread "
                     f"over the whole video (one every {info.duration_s / len(plan):.2f} s)")
    cache = FrameCache(path, plan.key(), geometry=stream.geometry) if use_cache else None
    if cache is not None and cache.exists():
        return Source(path, "video", cache.meta()["count"], info.duration_s, lambda: cache.batches(stream.batch_size),
                      cache.report(), notes, from_cache=True, decoder="cache", times_s=plan.times_s, cache=cache)
    frames = FrameStream(info, plan, stream)
    return Source(path, "video", len(plan), info.duration_s, lambda: _stream_into_cache(frames, cache, len(plan)),
                  frames.report, notes, decoder=frames.backend, times_s=plan.times_s, cache=cache)


def _stream_into_cache(stream: FrameStream, cache: FrameCache | None, expected: int) -> Iterator[FrameBatch]:
    """Yield the stream's batches; keep a copy in the cache, committed only if the stream ends normally."""
    if cache is None:
        yield from stream
        return
    with cache.writer(expected) as writer:
        for batch in stream:
            if writer is not None:
                writer.add(batch)
            yield batch
        if writer is not None:
            writer.commit(stream.report)
