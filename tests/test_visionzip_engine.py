"""Other video VLMs through the streaming engine: tiny random LLaVA-NeXT-Video and LLaVA-OneVision checkpoints,
built from configs in a temp folder (weights, tokenizer, chat template, video preprocessor config), answer through
`vidmini ask` with and without VisionZip; with every token kept the engine equals the model's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GREEDY_LEAD, REPO

from vidmini.testing.tiny_video_vlm import FAMILIES, write_checkpoint

SAMPLE = REPO / "sample_videos" / "scenes.mp4"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_vlm")
    return {family: write_checkpoint(str(root / family), family) for family in FAMILIES}


def load(path, tokens_per_frame=None):
    from vidmini.families.loading import LoadOptions, load_model

    return load_model(LoadOptions(path, "cpu", "float32", tokens_per_frame=tokens_per_frame))


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_answers_with_and_without_visionzip(family, checkpoints, cli):
    native = FAMILIES[family][1]
    for k in (None, native - 1, 1):
        extra = [] if k is None else ["--tokens-per-frame", k]
        out = cli("ask", SAMPLE, "What colours?", "Where?", "--model", checkpoints[family], "--max-frames", 4,
                  "--max-new-tokens", 3, "--json", "-q", *extra)
        assert out.code == 0, out.stderr
        result = out.json
        assert result["frames_used"] == 4 and result["tokens_per_frame"] == (k or native)
        assert [a["question"] for a in result["answers"]] == ["What colours?", "Where?"]


def test_profile_memory_counts_k_tokens_per_frame(checkpoints, cli):
    out = cli("ask", SAMPLE, "What?", "--model", checkpoints["llava_onevision"], "--max-frames", 3,
              "--max-new-tokens", 2, "--json", "-q", "--profile-memory", "--tokens-per-frame", 5)
    assert out.code == 0, out.stderr
    memory = out.json["memory"]
    assert {"vision_tower", "projector", "llm"} <= set(memory["weights"])
    hidden = 32 * 4  # tiny text hidden size, float32
    assert memory["token_buffer"]["tokens_per_frame"] == 5 and memory["token_buffer"]["bytes_per_frame"] == 5 * hidden
    assert memory["kv_cache"]["bytes_per_frame"] == 5 * memory["kv_cache"]["bytes_per_token"]


def test_options_of_the_other_family_are_usage_errors(checkpoints, tiny_checkpoint, cli):
    native = FAMILIES["llava_next_video"][1]
    for args in (["--model", checkpoints["llava_next_video"], "--tokens-per-frame", native + 1],
                 ["--model", checkpoints["llava_next_video"], "--prefusion-tokens", 8],
                 ["--model", tiny_checkpoint, "--tokens-per-frame", 8]):
        out = cli("ask", SAMPLE, "What?", "--max-frames", 2, "--max-new-tokens", 1, *args)
        assert out.code == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_missing_preprocessor_is_one_line_exit_4(checkpoints, tmp_path, cli):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["llava_onevision"], broken)
    (broken / "video_preprocessor_config.json").unlink()
    out = cli("ask", SAMPLE, "What?", "--model", broken)
    assert out.code == 4 and "preprocessor" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def frames_for(backend, count=3):
    from vidmini.inputs.video import StreamOptions, decode_all, make_plan, probe

    info = probe(str(SAMPLE))
    frames, _ = decode_all(info, make_plan(info, max_frames=count), StreamOptions(geometry=backend.geometry))
    return frames  # [T, S, S, 3] uint8


def own_forward(backend, frames, question, max_new):
    """The model's own path: placeholders expanded as its processor does, pixel_values_videos, generate."""
    from vidmini.inputs.preprocess import normalize, pixel_stats

    pv = normalize(torch.from_numpy(frames), pixel_stats(backend.image_mean, backend.image_std))
    prefix, suffix = backend.prompt(question)
    count = len(frames) * backend.native_tokens_per_frame + len(backend.video_end())
    ids = torch.tensor([prefix + [backend.config.video_token_id] * count + suffix])
    model = backend.model
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values_videos=pv[None]).logits[0, -1]
        out = model.generate(input_ids=ids, pixel_values_videos=pv[None], max_new_tokens=max_new, do_sample=False,
                             eos_token_id=None)
    return logits, out[0, ids.shape[1]:].tolist()


def engine_forward(backend, tok, frames, question, max_new):
    from vidmini.engine.engine import Engine, EngineOptions, Query
    from vidmini.engine.generate import new_cache, prefill
    from vidmini.inputs.video import FrameBatch

    engine = Engine(backend, tok, EngineOptions(batch_size=2, max_new_tokens=max_new, chunk=5))
    batch = FrameBatch(frames, np.arange(len(frames)) + 0.5, np.arange(len(frames)))
    encoded = engine.encode([batch], len(frames), [Query(question)])
    prefix, suffix = engine.frames.pieces(encoded, (0, None), len(frames), 0)
    cache = new_cache(backend, 1024)
    logits = prefill(backend, [prefix, encoded.buffer.frames(), backend.video_end(), suffix], cache, chunk=5)
    engine.frames.model.eos_ids = lambda: set()  # run all max_new steps, as generate(eos_token_id=None)
    return logits, engine.answer(encoded, [Query(question)])[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", ["native", "reduced, every token kept"])
def test_engine_with_every_token_equals_the_models_own_output(family, path, checkpoints, greedy_leads):
    from vidmini.families.hf_video.backend import FrameBudget

    backend, tok = load(checkpoints[family])
    if path != "native":
        backend.budget = FrameBudget(backend.native_tokens_per_frame, 0)  # VisionZip's path, keeping everything
    frames = frames_for(backend)
    want_logits, want_tokens = own_forward(backend, frames, "What happens?", 6)
    logits, tokens = engine_forward(backend, tok, frames, "What happens?", 6)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)
    assert tokens == want_tokens and len(tokens) == 6 and min(greedy_leads) > GREEDY_LEAD  # measured 1.2e-3


def test_centre_crop_geometry_and_its_own_cache_entry(tmp_path):
    from vidmini.inputs.cache import entry_key
    from vidmini.inputs.video.frames import FrameGeometry, model_frame

    wide = np.zeros((4, 8, 3), np.uint8)
    wide[:, 2:6] = 200  # the centre square of a 4x8 picture
    assert (model_frame(wide, 0, FrameGeometry(4, 1.0)) == 200).all()
    assert (model_frame(wide, 0, FrameGeometry(4))[:, [0, 3]] == 0).all()  # squashed: the edges stay
    video = tmp_path / "v.bin"
    video.write_bytes(b"x")
    keys = {entry_key(str(video), "plan", g) for g in (FrameGeometry(), FrameGeometry(384), FrameGeometry(336, 1.0))}
    assert len(keys) == 3 and entry_key(str(video), "plan") == entry_key(str(video), "plan", FrameGeometry())


@pytest.mark.parametrize("family", FAMILIES)
def test_options_are_checked_from_the_config_before_the_weights(family, checkpoints, cli, tmp_path):
    """Without its weights the checkpoint would fail to load (exit 4): these exit 2 from the config alone."""
    import shutil

    folder = shutil.copytree(checkpoints[family], tmp_path / "config-only", ignore=shutil.ignore_patterns("*.safetensors"))
    native = FAMILIES[family][1]
    too_many = cli("ask", SAMPLE, "What?", "--model", folder, "--tokens-per-frame", str(native + 1))
    assert too_many.code == 2 and f"has {native} tokens per frame" in too_many.stderr
    other = cli("ask", SAMPLE, "What?", "--model", folder, "--prefusion-tokens", "8")
    assert other.code == 2 and "--prefusion-tokens is for LLaVA-Mini" in other.stderr
    long = cli("ask", SAMPLE, "What?", "--model", folder, "--max-new-tokens", "5000")  # the tiny LLM has 4096
    assert long.code == 2 and "context of 4096 positions" in long.stderr
