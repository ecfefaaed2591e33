"""Families whose encoded unit is several frames (Qwen2.5-VL's temporal patch: 2), through the same engine: a
LLaVA-NeXT-Video backend made to encode frames in pairs must answer exactly as the one-frame backend does over
the same frames with the last one repeated (the engine holds an incomplete pair across batches and completes the
last one by repeating the video's last frame), and the family's own positions must reach the LLM."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO

from vidmini.testing.tiny_video_vlm import write_checkpoint

SAMPLE = REPO / "sample_videos" / "scenes.mp4"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from vidmini.families.loading import LoadOptions, load_model

    path = write_checkpoint(str(tmp_path_factory.mktemp("units") / "nv"), "llava_next_video")
    return load_model(LoadOptions(path, "cpu", "float32"))


def paired(backend):
    """The same backend, encoding two frames per unit: a unit's tokens are its frames' tokens side by side."""
    from vidmini.families.hf_video.backend import VideoBackend
    from vidmini.families.interface import UnitTokens

    class Pairs(VideoBackend):
        frames_per_unit = 2
        tokens_per_unit = property(lambda self: 2 * self.tokens_per_frame)
        shape = property(lambda self: replace(VideoBackend.shape.fget(self), tokens=2 * self.tokens_per_frame,
                                              frames_per_unit=2))
        seen: list = []

        def encode(self, pixel_values, frame_pass):
            tokens = self.encode_frames(pixel_values)  # [2U, K, H]
            k = tokens.shape[1]
            grid = torch.arange(2 * k).repeat(len(tokens) // 2, 1)[..., None]  # [U, 2K, 1]
            return UnitTokens(tokens.reshape(len(tokens) // 2, 2 * k, -1), grid)

        def positions(self, prefix, span, after):
            self.seen.append(span)
            return super().positions(prefix, span, after)

    pairs = Pairs.__new__(Pairs)
    pairs.__dict__.update(backend.__dict__)
    return pairs


def frames_of(backend, count):
    from vidmini.inputs.video import StreamOptions, decode_all, make_plan, probe

    info = probe(str(SAMPLE))
    return decode_all(info, make_plan(info, max_frames=count), StreamOptions(geometry=backend.geometry))[0]


def batches(frames, size):
    from vidmini.inputs.video import FrameBatch

    for lo in range(0, len(frames), size):
        part = frames[lo : lo + size]
        yield FrameBatch(part, np.arange(lo, lo + len(part)) + 0.5, np.arange(lo, lo + len(part)))


def test_pairs_answer_as_single_frames_with_the_last_repeated(loaded):
    from vidmini.engine.engine import Engine, EngineOptions, Query

    backend, tok = loaded
    frames = frames_of(backend, 5)
    queries = [Query("What happens?"), Query("Where?")]
    single = Engine(backend, tok, EngineOptions(batch_size=4, max_new_tokens=4))
    padded = np.concatenate([frames, frames[-1:]])  # what the paired engine must encode
    want = single.answer(single.encode(batches(padded, 3), 6, queries), queries)
    pairs = paired(backend)
    engine = Engine(pairs, tok, EngineOptions(batch_size=4, max_new_tokens=4))
    encoded = engine.encode(batches(frames, 3), 5, queries)  # batches of 3 and 2: a pair straddles them
    buffer = encoded.buffer
    assert (buffer.count, buffer.frame_count, encoded.frames) == (3, 5, 5)
    assert buffer.times.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 4.5]  # the last unit's second frame repeats
    assert torch.equal(buffer.frames(), single.encode(batches(padded, 3), 6, queries).buffer.frames())
    assert buffer.grid is not None and buffer.grid.shape == (3 * pairs.tokens_per_unit, 1)
    assert engine.answer(encoded, queries) == want
    span = pairs.seen[-1]
    assert (span.units, span.frames_per_unit, span.tokens) == (3, 2, 3 * pairs.tokens_per_unit)
    assert engine.tokens_per_frame == backend.tokens_per_frame


def test_the_familys_positions_reach_the_llm(loaded):
    """A family's Positions decide the position_ids of every prefill chunk and decode step: the LLM receives
    exactly them, for every cache index once; shifting them all by a constant keeps RoPE's relative distances, so
    the answer stays."""
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.families.interface import Positions

    backend, tok = loaded
    frames = frames_of(backend, 4)
    queries = [Query("What happens?")]

    class Shifted(Positions):
        def __init__(self, shift):
            self.shift = shift

        def ids(self, start, count, device):
            return (torch.arange(start, start + count, device=device) + self.shift).unsqueeze(0)  # [1, count]

    def answer(shift):
        pairs = paired(backend)
        received = []
        forward = pairs.language_forward

        def recording(**kwargs):
            received.append(kwargs["position_ids"][0].tolist())
            return forward(**kwargs)

        pairs.language_forward = recording
        pairs.positions = lambda prefix, span, after: Shifted(shift)
        engine = Engine(pairs, tok, EngineOptions(batch_size=4, max_new_tokens=5, chunk=7))
        return engine.answer(engine.encode(batches(frames, 4), 4, queries), queries)[0], received

    tokens, received = answer(0)
    shifted_tokens, shifted = answer(1000)
    assert shifted_tokens == tokens and len(tokens) == 5
    flat = [p for call in received for p in call]
    assert flat == list(range(len(flat))) and len(received[0]) == 7  # every index once: chunks of 7, then steps
    assert [p for call in shifted for p in call] == [p + 1000 for p in flat]
