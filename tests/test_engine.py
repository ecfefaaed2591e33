"""The streaming engine against the unbatched reference-style path, on the tiny checkpoint in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import GREEDY_LEAD, corpus
from vidmini.engine.engine import Engine, EngineOptions, Query
from vidmini.inputs.preprocess import normalize, pixel_stats
from vidmini.inputs.video import FrameBatch, decode_all, make_plan, probe


@pytest.fixture(scope="module")
def frames():
    info = probe(str(corpus("h264_long139s_768x432_intel_one_by_one_person.mp4")))
    out, _ = decode_all(info, make_plan(info, max_frames=24))
    return out  # [24, 336, 336, 3]


def batches(frames, size):
    for lo in range(0, len(frames), size):
        hi = min(len(frames), lo + size)
        yield FrameBatch(frames[lo:hi], np.arange(lo, hi) + 0.5, np.arange(lo, hi))


def engine_answers(model, tok, frames, queries, batch_size=5, max_new=8):
    engine = Engine(model, tok, EngineOptions(batch_size=batch_size, max_new_tokens=max_new))
    encoded = engine.encode(batches(frames, 7), len(frames), queries)
    return engine.answer(encoded, queries), engine


def reference_answer(model, tok, frames, question, max_new=8):
    """As the reference: all frames' pixels at once, frame-by-frame pre-fusion inside model.generate."""
    engine = Engine(model, tok, EngineOptions(batch_size=1))
    ids = torch.tensor([engine.prompt_ids(question)])
    pixels = normalize(torch.from_numpy(frames), pixel_stats(model.config.image_mean, model.config.image_std))
    return model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=max_new)[0].tolist()


def test_batched_engine_gives_the_reference_tokens(tiny_model, frames, greedy_leads):
    model, tok = tiny_model
    q = "What happens in this video?"
    ours, _ = engine_answers(model, tok, frames, [Query(q)])
    assert ours[0] == reference_answer(model, tok, frames, q)
    assert len(ours[0]) == 8 and min(greedy_leads) > GREEDY_LEAD  # measured 0.19


def test_many_questions_in_one_pass_equal_each_alone(tiny_model, frames, greedy_leads):
    model, tok = tiny_model
    questions = ["What happens in this video?", "How many people are there?", "What colour is the ball?"]
    together, _ = engine_answers(model, tok, frames, [Query(q) for q in questions])
    for q, answer in zip(questions, together):
        alone, _ = engine_answers(model, tok, frames, [Query(q)])
        assert answer == alone[0]
    assert min(greedy_leads) > GREEDY_LEAD  # measured 0.045


def test_batch_size_does_not_change_answers(tiny_model, frames, greedy_leads):
    model, tok = tiny_model
    q = [Query("Describe the scene.")]
    assert engine_answers(model, tok, frames, q, batch_size=1)[0] == engine_answers(model, tok, frames, q, batch_size=24)[0]
    assert min(greedy_leads) > GREEDY_LEAD  # measured 0.066


def test_chapter_queries_equal_the_chapter_alone(tiny_model, frames, greedy_leads):
    model, tok = tiny_model
    q = "Summarize this part of the video."
    answers, _ = engine_answers(model, tok, frames, [Query(q, 0, 10), Query(q, 10, None), Query(q)])
    assert answers[0] == engine_answers(model, tok, frames[:10], [Query(q)])[0][0]
    assert answers[1] == engine_answers(model, tok, frames[10:], [Query(q)])[0][0]
    assert answers[2] == engine_answers(model, tok, frames, [Query(q)])[0][0]
    assert min(greedy_leads) > GREEDY_LEAD  # measured 0.087


def test_buffer_is_written_by_index_and_kv_is_measured(tiny_model, frames):
    model, tok = tiny_model
    engine = Engine(model, tok, EngineOptions(batch_size=5, max_new_tokens=2))
    queries = [Query("Describe the scene.")]
    encoded = engine.encode(batches(frames, 7), len(frames) + 3, queries)  # capacity beyond the frames delivered
    buffer = encoded.buffer
    pointer = buffer.data.data_ptr()
    assert buffer.count == len(frames) and buffer.data.shape[0] == len(frames) + 3
    table = pixel_stats(model.config.image_mean, model.config.image_std)
    with torch.no_grad():
        for i in (0, 6, 7, len(frames) - 1):  # first, last of a decode batch, first of the next, last
            vision, compressed = model.encode_frames(normalize(torch.from_numpy(frames[i : i + 1]), table))
            alone, _ = model.fuse(vision, compressed, encoded.layout)  # [1, 1, H]
            torch.testing.assert_close(buffer.frames(i, i + 1), alone[0])
    engine.answer(encoded, queries)
    assert buffer.data.data_ptr() == pointer  # never reallocated
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert engine.measured_kv_bytes_per_token == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4


def test_out_of_memory_backs_off_then_gives_up(tiny_model, frames, monkeypatch):
    from vidmini.errors import OUT_OF_MEMORY, DeviceOutOfMemory, exit_code_for

    model, tok = tiny_model
    engine = Engine(model, tok, EngineOptions(batch_size=8, max_new_tokens=2))
    real = model.encode_frames
    calls = []

    def flaky(pv):
        calls.append(len(pv))
        if len(pv) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(pv)

    monkeypatch.setattr(model, "encode_frames", flaky)
    encoded = engine.encode(batches(frames[:8], 8), 8, [Query("x")])
    assert encoded.frames == 8 and engine.batch_size == 2 and calls[:3] == [8, 4, 2]
    monkeypatch.setattr(model, "encode_frames", lambda pv: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(DeviceOutOfMemory) as err:
        engine.encode(batches(frames[:2], 2), 2, [Query("x")])
    assert exit_code_for(err.value) == OUT_OF_MEMORY == 5  # regression: it used to map to 1


def test_more_frames_than_fit_are_spread_over_the_whole_video(tiny_model, monkeypatch, tmp_path):
    """Over capacity (context or memory), vidmini samples fewer frames across the whole video and says so."""
    from vidmini.jobs.ask import Sampling, run_ask
    from vidmini.engine.capacity import Capacity
    from conftest import REPO

    model, tok = tiny_model
    monkeypatch.setattr(Engine, "frame_capacity", lambda engine, prompt_tokens, wanted: Capacity(10, "a test limit"))
    monkeypatch.setenv("VIDMINI_CACHE_DIR", str(tmp_path))
    result = run_ask(model, tok, str(REPO / "sample_videos" / "scenes.mp4"), ["What?"], model_name="tiny",
                     sampling=Sampling(), max_new_tokens=2, progress=False)
    assert result["frames_used"] == 10
    assert any("40 frames at 1 fps do not fit (a test limit); using 10 frames" in n for n in result["notes"])


def test_sampler_keeps_the_nucleus_and_is_seeded():
    from vidmini.engine.generate import make_sampler

    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    pick = make_sampler(temperature=1.0, top_p=0.8, seed=5)  # 0.7 < 0.8: the nucleus is {0, 1}
    draws = [pick(logits) for _ in range(2000)]
    assert set(draws) == {0, 1}
    assert 0.70 < draws.count(0) / len(draws) < 0.86  # renormalised: 0.7 / 0.9 = 0.78
    again = make_sampler(temperature=1.0, top_p=0.8, seed=5)
    assert [again(logits) for _ in range(2000)] == draws
    assert {make_sampler(1.0, 1e-9, None)(logits) for _ in range(50)} == {0}  # a tiny nucleus is greedy
    cold = make_sampler(temperature=0.05, top_p=None, seed=1)  # low temperature sharpens towards the argmax
    assert sum(cold(logits) == 0 for _ in range(200)) == 200


def test_sampling_options_through_the_engine(tiny_model, frames):
    model, tok = tiny_model
    queries = [Query("What happens?")]

    def answer(**sampling):
        engine = Engine(model, tok, EngineOptions(batch_size=8, max_new_tokens=12, **sampling))
        return engine.answer(engine.encode(batches(frames[:6], 6), 6, queries), queries)[0]

    greedy = answer()
    assert answer(do_sample=True, temperature=1.0, top_p=1e-9, seed=0) == greedy
    sampled = answer(do_sample=True, temperature=1.5, seed=7)
    assert answer(do_sample=True, temperature=1.5, seed=7) == sampled
    assert any(answer(do_sample=True, temperature=1.5, seed=s) != greedy for s in range(3))


def test_prefill_out_of_memory_halves_the_chunk_then_gives_up(tiny_model, frames, monkeypatch, greedy_leads):
    import vidmini.engine.engine
    from vidmini.errors import DeviceOutOfMemory

    model, tok = tiny_model
    queries = [Query("What happens?"), Query("Where is it?")]
    engine = Engine(model, tok, EngineOptions(batch_size=8, max_new_tokens=4))
    encoded = engine.encode(batches(frames, 8), len(frames), queries)
    expected = engine.answer(encoded, queries)
    real = vidmini.engine.engine.prefill
    chunks = []

    def tight(model_, pieces, cache, chunk, start=0):
        chunks.append(chunk)
        if chunk > 128:
            raise torch.OutOfMemoryError("simulated")
        return real(model_, pieces, cache, chunk, start)

    monkeypatch.setattr(vidmini.engine.engine, "prefill", tight)
    engine.options.chunk = 512
    assert engine.answer(encoded, queries) == expected  # chunked smaller, same answers
    assert min(greedy_leads) > GREEDY_LEAD  # measured 0.075
    assert chunks[:3] == [512, 256, 128] and engine.options.chunk == 128
    monkeypatch.setattr(vidmini.engine.engine, "prefill", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(DeviceOutOfMemory, match="LLM prefill"):
        engine.answer(encoded, queries)
