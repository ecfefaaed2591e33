"""Qwen2.5-VL as a vidmini family, on a tiny random checkpoint in the Hub's layout (vidmini.testing.tiny_qwen2_5_vl).

- preprocessing: the processor's steps, compared with transformers' Qwen2VLVideoProcessor where torchvision is
  installed, and the patch layout against a patch-by-patch reading of the frames everywhere;
- the vision tower unit by unit equals its whole-video encode;
- M-RoPE positions equal the model's own get_rope_index, at several sampling rates and odd frame counts;
- at K = native, logits of the streamed, chunked path within 1e-4 of the model's own forward over
  pixel_values_videos, and greedy answers token for token the model's own `generate`;
- at K < native, VisionZip keeps tokens that are the merger's own, each at its own place.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from vidmini.families.interface import LoadOptions
from vidmini.families.qwen2_5_vl.family import FAMILY, QwenFrames, load_tokenizer, prompt_split
from vidmini.families.qwen2_5_vl.preprocess import VideoSettings, normalize_frames, patchify, preprocess, smart_resize
from vidmini.families.qwen2_5_vl.vision import UnitEncoder
from vidmini.testing.tiny_qwen2_5_vl import processor_configs, write_checkpoint

QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory) -> str:
    return write_checkpoint(str(tmp_path_factory.mktemp("qwen") / "ckpt"))


@pytest.fixture(scope="module")
def qwen(qwen_checkpoint):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(qwen_checkpoint)


@pytest.fixture(scope="module")
def settings(qwen_checkpoint) -> VideoSettings:
    with open(os.path.join(qwen_checkpoint, "video_preprocessor_config.json")) as f:
        return VideoSettings.from_config(json.load(f))


def video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=gen)  # [T, H, W, 3]


# ---- preprocessing ------------------------------------------------------------------------------------------------
def test_smart_resize_by_hand():
    # 1080p at the video processor's defaults: 1092 x 1932 is over 602112 pixels, so both sides scale by
    # sqrt(1080 * 1920 / 602112) = 1.8557 and floor to multiples of 28: 20 * 28, 36 * 28.
    assert smart_resize(1080, 1920, 28, 128 * 28 * 28, 768 * 28 * 28) == (560, 1008)
    assert smart_resize(84, 112, 28, 56 * 56, 112 * 112) == (84, 112)  # already multiples, within bounds
    assert smart_resize(20, 30, 28, 56 * 56, 112 * 112) == (56, 84)  # too small: scaled up, ceil
    with pytest.raises(ValueError):
        smart_resize(1, 300, 28, 56 * 56, 112 * 112)


def test_patch_layout_reads_the_frames_patch_by_patch(settings):
    pixels = normalize_frames(video(5, 56, 84).permute(0, 3, 1, 2).contiguous(), settings)  # [5, 3, 56, 84]
    patches, (gt, gh, gw) = patchify(pixels, settings)
    assert (gt, gh, gw) == (3, 4, 6)  # 5 frames -> 3 units, the last frame repeated
    padded = torch.cat([pixels, pixels[-1:]])
    p, m = settings.patch_size, settings.merge_size
    row = 0
    for t in range(gt):
        for by in range(gh // m):
            for bx in range(gw // m):
                for iy in range(m):
                    for ix in range(m):
                        y, x = (by * m + iy) * p, (bx * m + ix) * p
                        cube = padded[2 * t : 2 * t + 2, :, y : y + p, x : x + p].transpose(0, 1)  # [C, 2, p, p]
                        assert torch.equal(patches[row], cube.flatten())
                        row += 1
    assert row == len(patches)


@pytest.mark.parametrize("shape", [(7, 84, 112), (4, 100, 61), (5, 300, 200), (3, 31, 400)])
def test_preprocess_equals_the_processor(shape):
    """Bit for bit, resize included, on the CPU. Needs torchvision (the `qwen` extra) for the processor."""
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    _, config = processor_configs()
    processor = Qwen2VLVideoProcessor(**{k: v for k, v in config.items() if not k.endswith(("_type", "_class"))})
    frames = video(*shape)
    theirs = processor(videos=[frames.numpy()], return_tensors="pt", do_sample_frames=False,
                       cap_pixels_per_frame=False)
    ours, grid = preprocess(frames, VideoSettings.from_config(config))
    assert torch.equal(grid, theirs["video_grid_thw"])
    assert torch.equal(ours, theirs["pixel_values_videos"])


# ---- the model's own forward, and ours -----------------------------------------------------------------------
def own_inputs(model, tokenizer, frames: torch.Tensor, settings: VideoSettings, fps: float):
    """What the processor hands the model for one video + question: input_ids with the pads expanded, etc."""
    pixel_values, grid = preprocess(frames, settings)
    prefix, suffix = prompt_split(tokenizer, model.config.video_token_id, QUESTION)
    count = int(grid.prod()) // settings.merge_size**2
    ids = torch.tensor([prefix + [model.config.video_token_id] * count + suffix])
    return dict(input_ids=ids, pixel_values_videos=pixel_values, video_grid_thw=grid,
                mm_token_type_ids=(ids == model.config.video_token_id).int() * 2,
                second_per_grid_ts=torch.tensor([settings.temporal_patch_size / fps]))


def streamed(frames_model: QwenFrames, frames: torch.Tensor, settings: VideoSettings, fps: float, batch: int):
    """Units encoded `batch` frames at a time (frames already at the model's size), then (prefix, tokens, suffix
    embeddings, positions) as the engine lays them out."""
    from vidmini.families.interface import VideoSpan

    chunks = [frames_model.encode(normalize_frames(frames[i : i + batch].permute(0, 3, 1, 2).contiguous(), settings),
                                  None) for i in range(0, len(frames), batch)]
    tokens = torch.cat([c.tokens for c in chunks])  # [U, K, H]
    grid = torch.cat([c.grid for c in chunks]).flatten(0, 1)  # [U * K, 2]
    units, k = tokens.shape[:2]
    times = torch.arange(units * 2, dtype=torch.float64) / fps
    times[len(frames):] = times[len(frames) - 1]  # the padding frame repeats the last one's time
    prefix, suffix = frames_model.split(QUESTION)
    positions = frames_model.positions(len(prefix), VideoSpan(units, k, 2, times, grid), 0)
    return frames_model.embed(prefix), tokens.flatten(0, 1), frames_model.embed(suffix), positions


def chunked_logits(frames_model, pieces, positions, chunk: int) -> torch.Tensor:
    from transformers import DynamicCache

    embeds = torch.cat(pieces)
    cache, out = DynamicCache(config=frames_model.config), []
    with torch.no_grad():
        for start in range(0, len(embeds), chunk):
            part = embeds[start : start + chunk]
            out.append(frames_model.language_forward(inputs_embeds=part[None], cache=cache, logits_to_keep=0,
                                                     position_ids=positions.ids(start, len(part), "cpu")).logits[0])
    return torch.cat(out)


@pytest.mark.parametrize("frames,fps", [(7, 1.0), (6, 2.0), (3, 0.5)])
def test_positions_are_the_models_own(qwen, settings, frames, fps):
    model, tokenizer = qwen
    clip = video(frames, 112, 112, seed=frames)
    inputs = own_inputs(model, tokenizer, clip, settings, fps)
    theirs, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                           video_grid_thw=inputs["video_grid_thw"],
                                           second_per_grid_ts=inputs["second_per_grid_ts"])
    *_, positions = streamed(QwenFrames(model, tokenizer, settings), clip, settings, fps, batch=2)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(positions.ids(0, length, "cpu"), theirs)


def test_units_encoded_apart_equal_the_whole_video(qwen, settings):
    model, _ = qwen
    pixel_values, grid = preprocess(video(8, 112, 112), settings)
    with torch.no_grad():
        whole = model.model.get_video_features(pixel_values, grid).pooler_output[0]  # [4 * 16, H]
    encoder = UnitEncoder(model.model.visual, 8, 8)
    per_unit = pixel_values.view(4, -1, pixel_values.shape[1])
    apart = torch.cat([encoder(per_unit[u], 1).tokens[0] for u in range(4)])
    assert (apart - whole).abs().max() < 1e-5


@pytest.mark.parametrize("frames,fps,batch,chunk", [(7, 1.0, 2, 5), (6, 2.0, 4, 7), (9, 1.0, 6, 64)])
def test_streamed_logits_equal_the_models_forward(qwen, settings, frames, fps, batch, chunk):
    """K = native: every position's logits within 1e-4, for odd frame counts, units encoded a few at a time and the
    prefill chunked across the video's boundaries."""
    model, tokenizer = qwen
    clip = video(frames, 112, 112, seed=frames)
    with torch.no_grad():
        theirs = model(**own_inputs(model, tokenizer, clip, settings, fps)).logits[0]  # [L, V]
    frames_model = QwenFrames(model, tokenizer, settings)
    *pieces, positions = streamed(frames_model, clip, settings, fps, batch)
    ours = chunked_logits(frames_model, pieces, positions, chunk)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-4


def greedy_answer(frames_model, pieces, positions, max_new: int) -> list[int]:
    """Prefill in chunks, then one token at a time at the positions the Positions give."""
    from transformers import DynamicCache

    embeds = torch.cat(pieces)
    cache = DynamicCache(config=frames_model.config)
    with torch.no_grad():
        logits = None
        for start in range(0, len(embeds), 8):
            part = embeds[start : start + 8]
            logits = frames_model.language_forward(inputs_embeds=part[None], cache=cache, logits_to_keep=1,
                                                   position_ids=positions.ids(start, len(part), "cpu")).logits[0, -1]
        tokens, at = [], len(embeds)
        while len(tokens) < max_new and int(logits.argmax()) not in frames_model.eos_ids():
            tokens.append(int(logits.argmax()))
            step = frames_model.embed(tokens[-1:])
            logits = frames_model.language_forward(inputs_embeds=step[None], cache=cache, logits_to_keep=1,
                                                   position_ids=positions.ids(at, 1, "cpu")).logits[0, -1]
            at += 1
    return tokens


@pytest.mark.parametrize("seed,frames", [(0, 5), (2, 5), (3, 5), (4, 5), (0, 16), (5, 23)])
def test_greedy_tokens_equal_the_models_generate(qwen, settings, seed, frames):
    """5 frames: the prompt's last position is its largest; 16 and 23: the video's last time position (4 per unit
    at 1 fps) lies beyond the prompt's end, and the answer still continues from the prompt's last position."""
    model, tokenizer = qwen
    clip = video(frames, 112, 112, seed=seed)
    inputs = own_inputs(model, tokenizer, clip, settings, 1.0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    theirs = out[0, inputs["input_ids"].shape[1] :].tolist()
    theirs = theirs[: next((i for i, t in enumerate(theirs) if t in model.generation_config.eos_token_id), None)]
    frames_model = QwenFrames(model, tokenizer, settings)
    *pieces, positions = streamed(frames_model, clip, settings, 1.0, batch=2)
    assert greedy_answer(frames_model, pieces, positions, 12) == theirs
    assert theirs  # a random model that stops at once would prove nothing


# ---- VisionZip after the merger ------------------------------------------------------------------------------
def test_scores_are_mapped_from_window_order_to_the_mergers_order(qwen, settings):
    """VisionZip reads its scores and keys in the tower's window order; the order it maps them to must be the one
    the tower gives its merged tokens in: the merger over the last hidden states (window order), so mapped, is
    the tower's own output, unit by unit."""
    model, _ = qwen
    patches, (units, rows, cols) = patchify(normalize_frames(video(6, 84, 112).permute(0, 3, 1, 2).contiguous(),
                                                             settings), settings)
    encoder = UnitEncoder(model.model.visual, rows, cols)  # 3 x 4 merged: windows of 2 x 2 with padding
    with torch.no_grad():
        out = model.model.visual(patches, grid_thw=torch.tensor([[units, rows, cols]]))
        merged = model.model.visual.merger(out.last_hidden_state).view(units, encoder.native, -1)
    mapped = merged[:, encoder.raster_order()]
    assert not torch.equal(encoder.raster_order(), torch.arange(encoder.native))  # the test means something
    assert torch.equal(mapped, out.pooler_output.view(units, encoder.native, -1))


def test_visionzip_keeps_the_mergers_own_tokens_at_their_places(qwen, qwen_checkpoint, settings):
    model, tokenizer = qwen
    clip = normalize_frames(video(4, 112, 112).permute(0, 3, 1, 2).contiguous(), settings)
    native = QwenFrames(model, tokenizer, settings).encode(clip, None)  # [2, 16, H]
    reduced = FAMILY.adapt(model, tokenizer, LoadOptions(qwen_checkpoint, tokens_per_frame=4))
    assert reduced.tokens_per_unit == 8  # 4 per frame, 2 frames per unit
    out = reduced.encode(clip, None)
    assert out.tokens.shape == (2, 8, native.tokens.shape[-1]) and out.grid.shape == (2, 8, 2)
    dominant = 7  # round(8 * 54 / 64)
    for u in range(2):
        index = out.grid[u, :dominant, 0] * 4 + out.grid[u, :dominant, 1]
        assert index.unique().numel() == dominant  # distinct places, raster order
        assert torch.equal(index, index.sort().values)
        assert torch.allclose(out.tokens[u, :dominant], native.tokens[u, index], atol=1e-6)


# ---- through vidmini's engine and CLI ----------------------------------------------------------------------------
SAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "sample_videos", "scenes.mp4")


def sample_frames(frames_model, count: int):
    """`count` frames of the sample video at 1 fps, decoded at the model's geometry, and their times."""
    from vidmini.inputs.video import StreamOptions, decode_all, make_plan, probe

    info = probe(SAMPLE)
    frames, times = decode_all(info, make_plan(info, max_frames=count), StreamOptions(geometry=frames_model.geometry))
    return frames, times  # [T, S, S, 3] uint8, [T] seconds


@pytest.mark.parametrize("count", [7, 8])
def test_engine_at_native_k_equals_the_models_forward_and_generate(qwen, qwen_checkpoint, settings, count,
                                                                   greedy_leads):
    """The whole engine: units held back and completed across batches of 3 frames, the buffer, the chunked prefill
    at the family's positions, the decode. Odd and even frame counts."""
    import numpy as np

    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.engine.generate import new_cache, positioned, prefill
    from vidmini.inputs.video import FrameBatch

    model, tokenizer = qwen
    frames_model = FAMILY.adapt(model, tokenizer, LoadOptions(qwen_checkpoint))
    frames, _ = sample_frames(frames_model, count)
    fps = 1.0
    inputs = own_inputs(model, tokenizer, torch.from_numpy(frames), settings, fps)
    with torch.no_grad():
        want_logits = model(**inputs).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    want_tokens = out[0, inputs["input_ids"].shape[1] :].tolist()

    engine = Engine(frames_model, tokenizer, EngineOptions(batch_size=3, max_new_tokens=6, chunk=5))
    batch = FrameBatch(frames, np.arange(count) / fps + 0.5, np.arange(count))
    encoded = engine.encode([batch], count, [Query(QUESTION)])
    prefix, suffix = engine.frames.pieces(encoded, (0, None), count, 0)
    positions = frames_model.positions(len(prefix), encoded.buffer.span(), 0)
    cache = new_cache(frames_model, 1024)
    logits = prefill(positioned(frames_model, positions), [prefix, encoded.buffer.frames(), suffix], cache, chunk=5)
    assert (logits - want_logits).abs().max() < 1e-4
    frames_model.eos_ids = lambda: set()  # all 6 steps, as generate(eos_token_id=None)
    assert engine.answer(encoded, [Query(QUESTION)])[0] == want_tokens
    assert min(greedy_leads) > 1e-4  # no pick that float noise could flip


def test_ask_answers_with_and_without_visionzip(qwen_checkpoint, cli):
    # The sample is 320 x 240: the processor's 112 x 84 frame (within the tiny's 112 * 112 pixels) has 4 x 3 merged
    # tokens per unit; K = 5 keeps 10 of them, K = 1 keeps 2.
    for k, per_unit in ((None, 12), (5, 10), (1, 2)):
        extra = [] if k is None else ["--tokens-per-frame", k]
        out = cli("ask", SAMPLE, "What colours?", "Where?", "--model", qwen_checkpoint, "--max-frames", 5,
                  "--max-new-tokens", 3, "--json", "-q", *extra)
        assert out.code == 0, out.stderr
        result = out.json
        assert result["frames_used"] == 5 and result["tokens_per_frame"] == per_unit / 2
        assert [a["question"] for a in result["answers"]] == ["What colours?", "Where?"]
        assert all(isinstance(a["answer"], str) for a in result["answers"])


def test_dry_run_and_profile_memory(qwen_checkpoint, cli):
    plan = cli("ask", SAMPLE, "What?", "--model", qwen_checkpoint, "--max-frames", 6, "--dry-run", "--json")
    assert plan.code == 0, plan.stderr
    assert plan.json["frames"] == 6 and plan.json["weights_bytes"] > 0
    # The sample's 112 x 84 frames: 6 tokens per frame (12 per unit of 2): the buffer's 64 floats each + the KV
    # cache's 2 layers x 2 heads x 16 x (k, v) floats; the 32768-position context holds 2730 units = 5460 frames.
    assert plan.json["per_frame_bytes"] == 6 * (64 * 4 + 2 * 2 * 16 * 2 * 4)
    assert plan.json["longest_video_at_1fps"]["24GB"]["frames"] == 32768 // 12 * 2
    out = cli("ask", SAMPLE, "What?", "--model", qwen_checkpoint, "--max-frames", 6, "--max-new-tokens", 2, "--json",
              "-q", "--profile-memory", "--tokens-per-frame", 3)
    assert out.code == 0, out.stderr
    memory = out.json["memory"]
    assert {"vision_tower", "patch_embed", "merger", "llm"} <= set(memory["weights"])
    hidden = 64 * 4  # tiny text hidden size, float32
    buffer = memory["token_buffer"]
    assert buffer["bytes_per_frame"] == 3 * hidden
    # 6 frames in 3 units of 2: the buffer is counted in frames, in the JSON and in the text
    assert buffer["capacity_frames"] == 6 and buffer["bytes"] == 6 * buffer["bytes_per_frame"]
    assert f"{buffer['bytes'] / 2**20:.1f} MB for 6 frames" in out.stderr


def test_options_are_checked_from_the_config_before_the_weights(qwen_checkpoint, cli, tmp_path):
    """Without its weights the checkpoint would fail to load (exit 4): these exit 2 from the config alone."""
    import shutil

    folder = shutil.copytree(qwen_checkpoint, tmp_path / "config-only", ignore=shutil.ignore_patterns("*.safetensors"))
    too_many = cli("ask", SAMPLE, "What?", "--model", folder, "--tokens-per-frame", "9")
    assert too_many.code == 2 and "has 8 tokens per frame" in too_many.stderr
    other = cli("ask", SAMPLE, "What?", "--model", folder, "--prefusion-tokens", "8")
    assert other.code == 2 and "--prefusion-tokens is for LLaVA-Mini" in other.stderr


@pytest.mark.parametrize("tokens_per_frame,count", [(None, 5), (3, 6)])
def test_evidence_is_the_attention_the_model_computes_at_its_m_rope_positions(qwen_checkpoint, tokens_per_frame,
                                                                               count):
    """--evidence through the engine: the queries (the question's last position and the answer's fed-back tokens)
    are rotated at the family's (time, row, column) positions by the decoder's own rotary embedding, and their
    attention, re-scored from the KV cache, equals the eager attention of the text model over the whole sequence
    at the same positions, per unit (the sum over its K tokens), per layer. Each frame of a unit gets its unit's
    score and its own time; the padding frame of an odd count gets none."""
    import numpy as np
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.inputs.video import FrameBatch

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(qwen_checkpoint, "tiny")
    frames_model = FAMILY.adapt(model, tokenizer, LoadOptions(qwen_checkpoint, tokens_per_frame=tokens_per_frame))
    frames, _ = sample_frames(frames_model, count)
    max_new, times = 4, np.arange(count) * 1.5 + 0.25
    engine = Engine(frames_model, tokenizer, EngineOptions(max_new_tokens=max_new, evidence=True, chunk=7,
                                                           evidence_layers=(0, 1)))
    frames_model.eos_ids = lambda: set()  # all steps: three fed-back tokens besides the question's last position
    encoded = engine.encode([FrameBatch(frames, times, np.arange(count))], count, [Query(QUESTION)])
    found = {}
    tokens = engine.answer(encoded, [Query(QUESTION)], on_evidence=found.__setitem__)[0]
    prefix, suffix = engine.frames.pieces(encoded, (0, None), count, 0)
    video, k = encoded.buffer.frames(), frames_model.tokens_per_unit
    units = len(video) // k
    assert len(tokens) >= max_new  # no eos: the budget, plus any blank tokens before the answer (uncounted)
    sequence = torch.cat([prefix, video, suffix, frames_model.embed(tokens[:-1])])  # [L, H]: all but the last fed back
    positions = frames_model.positions(len(prefix), encoded.buffer.span(), 0).ids(0, len(sequence), "cpu")
    model.set_attn_implementation("eager")
    with torch.no_grad():
        weights = model.get_decoder()(inputs_embeds=sequence[None], position_ids=positions,
                                      output_attentions=True).attentions
    first, n = len(prefix), len(tokens)  # queries: the question's last position and the fed-back tokens
    per_unit = [w[0, :, :, first : first + units * k].unflatten(-1, (units, k)).sum(-1).mean(0) for w in weights]
    expected = torch.stack([p[-n:].mean(0) for p in per_unit])  # [layers, units]
    baseline = torch.stack([p[first + units * k] for p in per_unit])  # the first position after the frames
    per_frame = torch.arange(count) // 2  # each frame's unit
    assert (found[0].answer - expected[:, per_frame]).abs().max() < 1e-5
    assert (found[0].baseline - baseline[:, per_frame]).abs().max() < 1e-5
    assert found[0].times.tolist() == times.tolist()
    assert expected.std(-1).min() > 1e-3  # the units are told apart: a uniform attention would prove little


def test_a_rotation_that_wants_more_than_q_k_cos_sin_fails_loudly(monkeypatch):
    """Qwen2.5-VL's 4.x code rotated with apply_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section); a module
    whose rotation wants more than (q, k, cos, sin), or has none, is refused before any query is scored."""
    import sys
    import types

    from vidmini.infra.internals import InternalsChanged, rotary_function

    old = types.ModuleType("old_qwen")
    old.apply_rotary_pos_emb = lambda q, k, cos, sin, mrope_section, unsqueeze_dim=1: (q, k)
    monkeypatch.setitem(sys.modules, "old_qwen", old)
    attention = type("Attention", (), {"__module__": "old_qwen"})()
    with pytest.raises(InternalsChanged, match="mrope_section"):
        rotary_function(attention)
    del old.apply_rotary_pos_emb
    with pytest.raises(InternalsChanged, match="nothing"):
        rotary_function(attention)


def test_ask_evidence_json(qwen_checkpoint, cli):
    from vidmini.inputs.video import probe

    out = cli("ask", SAMPLE, "What colours?", "Where?", "--model", qwen_checkpoint, "--max-frames", 7,
              "--max-new-tokens", 3, "--json", "-q", "--evidence", 2)
    assert out.code == 0, out.stderr
    duration = probe(SAMPLE).duration_s
    for answer in out.json["answers"]:
        assert 1 <= len(answer["evidence"]) <= 2
        for m in answer["evidence"]:
            assert 0 <= m["start_s"] <= m["end_s"] <= duration and 0 < m["score"] <= 1


def test_frame_size_follows_the_processor_files_transformers_reads(tmp_path):
    """The files in transformers' order (processor_config.json's nested video processor, then
    video_preprocessor_config.json, then the image processor's preprocessor_config.json), and each video's frame
    is smart_resize of its display size within that budget: no cap of vidmini's own."""
    from vidmini.families.qwen2_5_vl.family import frame_geometry, read_settings
    from vidmini.errors import ModelLoadError

    def size(width: int, height: int) -> tuple[int, int]:
        geometry = frame_geometry(read_settings(str(tmp_path)), width, height)
        return geometry.height, geometry.width

    # The Hub's layout: only the image processor's config; its still-image budget is the video's too.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}))
    assert size(320, 240) == (252, 308)  # each side rounded to the nearest multiple of 28
    assert size(1920, 1080) == (1092, 1932)  # within 12845056: full resolution
    assert size(240, 320) == (308, 252)  # a portrait (rotated) video
    # A video processor config takes precedence (transformers 5's save_pretrained writes one).
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}}))
    assert size(1920, 1080) == (560, 1008)
    # processor_config.json with the video processor nested comes first of all.
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"video_processor": {"size": {"shortest_edge": 3136, "longest_edge": 200 * 200}}}))
    assert size(200, 200) == (196, 196)
    (tmp_path / "processor_config.json").write_text(json.dumps({"video_processor": {"cap_pixels_per_frame": True}}))
    with pytest.raises(ModelLoadError, match="cap_pixels_per_frame"):
        read_settings(str(tmp_path))


def test_hub_layout_answers_the_same(qwen_checkpoint, cli, tmp_path):
    """The files as the Hub's Qwen2.5-VL checkpoints have them (chat_template.json, the image processor's config
    only): the same frames, prompt and answers as the folder transformers 5 writes."""
    import shutil

    hub = shutil.copytree(qwen_checkpoint, tmp_path / "hub")
    template = (hub / "chat_template.jinja").read_text()
    (hub / "chat_template.jinja").unlink()
    (hub / "video_preprocessor_config.json").unlink()
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    args = [SAMPLE, "What colours?", "--max-frames", 4, "--max-new-tokens", 4, "--json", "-q"]
    ours, theirs = cli("ask", "--model", qwen_checkpoint, *args), cli("ask", "--model", hub, *args)
    assert ours.code == theirs.code == 0, theirs.stderr
    assert ours.json["answers"] == theirs.json["answers"] and theirs.json["tokens_per_frame"] == 6


def test_summarize_with_chapters_that_cut_a_unit(qwen_checkpoint, cli, tmp_path):
    """Chapters of 15 frames: the second starts inside a unit of 2 frames; every chapter still answers."""
    report = tmp_path / "r.jsonl"
    out = cli("summarize", SAMPLE, "-o", report, "--model", qwen_checkpoint, "--chapter-minutes", 0.25,
              "--max-new-tokens", 3, "-q")
    assert out.code == 0, out.stderr
    record = json.loads(report.read_text().splitlines()[0])
    assert record["error"] is None and [c["frames"] for c in record["chapters"]] == [15, 15, 10]
    assert all(isinstance(c["summary"], str) for c in record["chapters"])


def test_reduced_tokens_keep_their_positions_through_the_engine(qwen, qwen_checkpoint):
    """K < native: the buffer carries each kept token's place, and its position is (its unit's time, its row, its
    column) as in the native layout."""
    import numpy as np

    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.inputs.video import FrameBatch

    model, tokenizer = qwen
    native = FAMILY.adapt(model, tokenizer, LoadOptions(qwen_checkpoint))
    reduced = FAMILY.adapt(model, tokenizer, LoadOptions(qwen_checkpoint, tokens_per_frame=3))
    frames, _ = sample_frames(native, 5)
    positions = {}
    for name, frames_model in (("native", native), ("reduced", reduced)):
        engine = Engine(frames_model, tokenizer, EngineOptions(batch_size=4, max_new_tokens=2))
        encoded = engine.encode([FrameBatch(frames, np.arange(5.0), np.arange(5))], 5, [Query(QUESTION)])
        span = encoded.buffer.span()
        ids = frames_model.positions(10, span, 0).ids(10, span.tokens, "cpu")[:, 0].T  # [N, 3]
        positions[name] = {tuple(p) for p in ids.tolist()}
        if name == "reduced":
            assert span.tokens == 3 * 6 and torch.equal(ids[:, 1:] - 10, span.grid)  # 3 units of 6 tokens
    assert positions["reduced"] <= positions["native"]  # every kept token sits where the model put it


# ---- non-square videos: vidmini's answers are the model's own generate over the processor's frames --------------
def own_frames(path: str) -> tuple[torch.Tensor, float]:
    """The frames the acceptance check would give the processor, by this test's own reading of the file: every
    frame decoded with PyAV to RGB, turned upright by its rotation, then at each of vidmini's 1 fps sample times
    the frame on screen (the last one that starts at or before it). [T, H, W, 3] uint8 and the rate."""
    import av
    import numpy as np

    from vidmini.inputs.video import make_plan, probe

    info = probe(path)
    times = info.start_s + make_plan(info, "time", 1.0).times_s
    decoded = []  # (presentation time, upright RGB)
    with av.open(path) as container:
        for frame in container.decode(video=0):
            picture = frame.to_ndarray(format="rgb24")
            if frame.rotation % 360:
                picture = np.rot90(picture, k=(frame.rotation // 90) % 4)  # counter-clockwise degrees
            decoded.append((frame.time, np.ascontiguousarray(picture)))
    # Frames come out in display order; an AVI with B-frames labels some with swapped times (0.12 after 0.16), so
    # a frame starts at the latest time seen so far, as a player showing them in that order would.
    starts = np.maximum.accumulate(np.array([t for t, _ in decoded]))
    shown = [max(0, int(np.searchsorted(starts, t, side="right")) - 1) for t in times]
    return torch.from_numpy(np.stack([decoded[i][1] for i in shown])), 1.0


def rendered_clip(folder, width: int, height: int, seconds: int = 5) -> str:
    """An H.264 clip of this test's own: smooth colours and a moving square, `width` x `height`, 4 fps."""
    from fractions import Fraction

    import av
    import numpy as np

    path = str(folder / f"clip_{width}x{height}.mp4")
    y, x = np.mgrid[0:height, 0:width]
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * 4):
            picture = np.stack([(x * 255 // width + 20 * i) % 256, y * 255 // height,
                                np.full_like(x, 60 * (i // 4) % 256)], axis=-1).astype(np.uint8)
            left = 10 * i % max(1, width - 40)
            picture[height // 3 : height // 3 + 40, left : left + 40] = 255
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 4)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def non_square_videos(folder) -> list[str]:
    from tests.conftest import CORPUS

    shared = [CORPUS / n for n in ("mpeg4asp_mp3_320x240_mmaction2.avi", "av1_640x360_torchcodec.mkv",
                                   "h264_mov_rot90_3frames_decord.mov")]
    return [rendered_clip(folder, 426, 240), rendered_clip(folder, 240, 320)] + [str(p) for p in shared if p.exists()]


@pytest.fixture(scope="module")
def budget_checkpoint(tmp_path_factory) -> str:
    """The tiny checkpoint with a larger frame budget (up to 224 x 224 pixels) in the Hub's layout: only the image
    processor's preprocessor_config.json, which is then the video processor's config too."""
    folder = write_checkpoint(str(tmp_path_factory.mktemp("qwen-budget") / "ckpt"), max_pixels=224 * 224)
    os.remove(os.path.join(folder, "video_preprocessor_config.json"))
    return folder


def test_ask_on_non_square_videos_is_the_models_own_generate(budget_checkpoint, cli, tmp_path, monkeypatch):
    """What the acceptance check does with a checkpoint made elsewhere: frames sampled at 1 fps by its own code,
    the processor's pixels (our preprocess; the processor itself where torchvision is installed), the model's own
    `generate`; against `vidmini ask` in process. The tokens must be the same, pick for pick."""
    import importlib.util

    import vidmini.engine.engine
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from tests.conftest import lead
    from vidmini.families.qwen2_5_vl.family import read_settings

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(budget_checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(budget_checkpoint)
    settings = read_settings(budget_checkpoint)
    assert settings.max_pixels == 224 * 224  # read from preprocessor_config.json, as the video processor reads it
    processor = None
    if importlib.util.find_spec("torchvision"):
        from transformers import AutoVideoProcessor

        processor = AutoVideoProcessor.from_pretrained(budget_checkpoint)
    picks: list[int] = []
    leads: list[float] = []
    real = vidmini.engine.engine.greedy

    def recording(logits):
        leads.append(lead(logits))
        picks.append(real(logits))
        return picks[-1]

    monkeypatch.setattr(vidmini.engine.engine, "greedy", recording)
    sizes = set()
    for path in non_square_videos(tmp_path):
        frames, fps = own_frames(path)
        inputs = own_inputs(model, tokenizer, frames, settings, fps)
        sizes.add(tuple(int(v) for v in inputs["video_grid_thw"][0, 1:]))
        if processor is not None:
            theirs = processor(videos=[frames.numpy()], return_tensors="pt", cap_pixels_per_frame=False)
            assert torch.equal(inputs["pixel_values_videos"], theirs["pixel_values_videos"])
            assert torch.equal(inputs["video_grid_thw"], theirs["video_grid_thw"])
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        want = out[0, inputs["input_ids"].shape[1] :].tolist()
        picks.clear()
        result = cli("ask", path, QUESTION, "--model", budget_checkpoint, "--max-new-tokens", 8, "--json", "-q")
        assert result.code == 0, result.stderr
        assert result.json["frames_used"] == len(frames), path
        assert picks == want, path
        assert result.json["answers"][0]["answer"] == tokenizer.decode(want, skip_special_tokens=True).strip()
    assert len({h / w for h, w in sizes}) >= 3  # landscape, portrait and other ratios, not one square
    assert min(leads) > 1e-4  # no pick that float noise could flip


def test_dry_run_and_profile_memory_follow_a_non_square_video(budget_checkpoint, cli, tmp_path):
    """--dry-run's numbers are the video's own frame size, and the run's --profile-memory agrees with them."""
    from vidmini.families.qwen2_5_vl.family import frame_geometry, read_settings

    path = rendered_clip(tmp_path, 426, 240)
    geometry = frame_geometry(read_settings(budget_checkpoint), 426, 240)
    per_unit = (geometry.height // 28) * (geometry.width // 28)
    # 426 x 240 rounds to 252 x 420 pixels, over 224 * 224: both sides scale by 1.43 and floor to multiples of 28.
    assert (geometry.height, geometry.width) == (168, 280) and per_unit == 60
    plan = cli("ask", path, "What?", "--model", budget_checkpoint, "--dry-run", "--json")
    assert plan.code == 0, plan.stderr
    hidden, kv = 64 * 4, 2 * 2 * 16 * 2 * 4  # float32 buffer row; 2 layers x 2 KV heads x 16 x (k, v)
    assert plan.json["frames"] == 5 and plan.json["tokens_per_frame"] == per_unit / 2
    assert plan.json["per_frame_bytes"] == -(-per_unit * (hidden + kv) // 2)
    assert plan.json["longest_video_at_1fps"]["24GB"]["frames"] == 32768 // per_unit * 2
    out = cli("ask", path, "What?", "--model", budget_checkpoint, "--max-new-tokens", 2, "--json", "-q",
              "--profile-memory")
    assert out.code == 0, out.stderr
    memory = out.json["memory"]
    assert out.json["tokens_per_frame"] == per_unit / 2
    assert memory["token_buffer"]["bytes_per_frame"] == per_unit * hidden // 2
    assert memory["token_buffer"]["frames"] == 5


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_both_decoders_and_the_cache_hand_over_the_processors_pixels(budget_checkpoint, cli, tmp_path, decoder):
    """Each decoder resizes every frame from its full resolution as the processor does (bicubic, antialiased), to
    the video's own size; the frame cache keeps those frames under that size, and answers from them the same."""
    from vidmini.families.qwen2_5_vl.family import frame_geometry, read_settings
    from vidmini.inputs.video import StreamOptions, decode_all, make_plan, probe
    from vidmini.inputs.video.decord_decoder import available
    from vidmini.inputs.video.frames import resize_bicubic

    if decoder == "decord" and not available():
        pytest.skip("decord is not installed")
    path = rendered_clip(tmp_path, 426, 240)
    info = probe(path)
    geometry = frame_geometry(read_settings(budget_checkpoint), info.display_width, info.display_height)
    ours, stream = decode_all(info, make_plan(info, "time", 1.0), StreamOptions(decoder=decoder, geometry=geometry))
    frames, _ = own_frames(path)
    want = resize_bicubic(frames.permute(0, 3, 1, 2).contiguous(), (geometry.height, geometry.width))
    assert stream.backend == decoder and ours.shape == (len(frames), 168, 280, 3)
    assert torch.equal(torch.from_numpy(ours), want.permute(0, 2, 3, 1))
    args = [path, QUESTION, "--model", budget_checkpoint, "--max-new-tokens", 4, "--decoder", decoder, "--json", "-q"]
    first, again = cli("ask", *args), cli("ask", *args)
    assert first.code == again.code == 0, first.stderr + again.stderr
    assert not first.json["from_cache"] and again.json["from_cache"]
    assert first.json["answers"] == again.json["answers"]


def test_summarize_gives_each_video_its_own_frame_size(budget_checkpoint, cli, tmp_path):
    """A folder of a landscape and a portrait clip through one loaded model: each file's summary is what `ask`
    answers to the same prompt on that file alone, at that file's frame size (the non-square test above shows
    ask's frames are the processor's)."""
    from vidmini.jobs.summarize import SUMMARY_PROMPT

    folder = tmp_path / "videos"
    folder.mkdir()
    paths = [rendered_clip(folder, 426, 240), rendered_clip(folder, 240, 320)]
    report = tmp_path / "r.jsonl"
    out = cli("summarize", folder, "-o", report, "--model", budget_checkpoint, "--max-new-tokens", 4, "-q")
    assert out.code == 0, out.stderr
    records = {r["path"]: r for r in map(json.loads, report.read_text().splitlines())}
    for path in paths:
        alone = cli("ask", path, SUMMARY_PROMPT, "--model", budget_checkpoint, "--max-new-tokens", 4, "--json", "-q")
        assert alone.code == 0, alone.stderr
        record = next(r for p, r in records.items() if os.path.basename(p) == os.path.basename(path))
        assert record["error"] is None and record["summary"] == alone.json["answers"][0]["answer"], path
