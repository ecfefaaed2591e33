"""LLaVA-Mini with --prefusion-tokens K: VisionZip on the 576 vision tokens that enter pre-fusion.

K = every patch (576 for CLIP-L/336) keeps every token at its own position and must be the exact path (frame tokens, greedy answers, and the
reference's own tokens on the fixture); smaller K runs end to end. How much smaller K changes the answers is a
measurement, not a test (bench/visionzip.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, GREEDY_LEAD, REPO

from vidmini.engine.engine import Engine, EngineOptions, Query
from vidmini.inputs.video import FrameBatch

SAMPLE = REPO / "sample_videos" / "scenes.mp4"


def run(model, tok, frames, prefusion_tokens, max_new=6, ids=None):
    engine = Engine(model, tok, EngineOptions(batch_size=3, max_new_tokens=max_new, prefusion_tokens=prefusion_tokens))
    if ids is not None:  # the fixture has no tokenizer: its prompt ids are given
        engine.frames.prompt_ids = lambda question: list(ids)
    batch = FrameBatch(frames, np.arange(len(frames)) + 0.5, np.arange(len(frames)))
    encoded = engine.encode([batch], len(frames), [Query("What happens?")])
    return encoded.buffer.frames().clone(), engine.answer(encoded, [Query("What happens?")])[0]


@pytest.fixture(scope="module")
def frames():
    from vidmini.inputs.video import decode_all, make_plan, probe

    info = probe(str(SAMPLE))
    return decode_all(info, make_plan(info, max_frames=5))[0]  # [5, 336, 336, 3]


def test_every_token_kept_is_the_exact_path(tiny_model, frames, greedy_leads):
    model, tok = tiny_model
    exact_tokens, exact_answer = run(model, tok, frames, None)
    all_tokens, all_answer = run(model, tok, frames, model.model.vision_tower.num_patches)
    torch.testing.assert_close(all_tokens, exact_tokens, rtol=1e-5, atol=1e-5)
    assert all_answer == exact_answer and min(greedy_leads) > GREEDY_LEAD  # measured 0.05


def test_fewer_tokens_change_the_frame_token_but_run(tiny_model, frames):
    model, tok = tiny_model
    exact_tokens, _ = run(model, tok, frames, None)
    tokens, answer = run(model, tok, frames, model.model.vision_tower.num_patches // 4)
    assert tokens.shape == exact_tokens.shape and torch.isfinite(tokens).all() and len(answer) == 6
    assert not torch.equal(tokens, exact_tokens)  # pre-fusion attends to a quarter of the tokens: it changes


def test_kept_positions_are_raster_indices_of_dominant_and_targets():
    from vidmini.reduce.prefusion import kept_positions
    from vidmini.reduce.visionzip import Budget

    dominant = torch.tensor([[1, 4]])  # of 8 tokens; leftovers 0 2 3 5 6 7, two targets at stride 3: 0 and 5
    assert kept_positions(dominant, 8, Budget(2, 2)).tolist() == [[1, 4, 0, 5]]
    assert kept_positions(dominant, 8, Budget(2, 0)).tolist() == [[1, 4]]


def test_on_the_reference_fixture_every_token_kept_gives_the_reference_tokens(greedy_leads):
    ckpt = FIXTURES / "llava_mini_tiny_c1"
    if not ckpt.exists():
        pytest.skip("fixtures not present")
    from transformers import AutoModelForCausalLM

    import vidmini  # noqa: F401

    io = np.load(ckpt / "reference_io.npz")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    ids = io["input_ids"].tolist()
    _, answer = run(model, None, io["video_uint8"], 576, max_new=5, ids=ids)
    assert answer == io["video_generated_ids"].tolist()[: len(answer)] and len(answer) > 0
    # Every stage is within 1e-4 of the reference (test_model_fixture): each pick must lead by more than twice that.
    assert min(greedy_leads) > 2e-4  # measured 0.24


def test_ask_with_prefusion_tokens(tiny_checkpoint, cli):
    out = cli("ask", SAMPLE, "What?", "--model", tiny_checkpoint, "--max-frames", 3, "--max-new-tokens", 2, "--json",
              "-q", "--prefusion-tokens", 16, "--profile-memory")
    assert out.code == 0, out.stderr
    assert out.json["prefusion_tokens"] == 16 and out.json["tokens_per_frame"] == 1
