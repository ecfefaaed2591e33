"""The convolutional vision tower (the demo model's): loaded through the same from_pretrained path as CLIP, sized
by its config, and run by the engine end to end."""

from __future__ import annotations

import json

import pytest
import torch


def conv_config(hidden: int, **changes) -> dict:
    config = dict(model_type="vidmini_conv_vision", image_size=336, pool=2, stem_channels=[8, 8, 16], grid_convs=1,
                  patch_size=48, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                  num_attention_heads=2)
    return {**config, **changes}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vidmini.testing.tiny_checkpoint import SIZES, write_checkpoint

    out = tmp_path_factory.mktemp("conv")
    return write_checkpoint(str(out), patch_size=48, vision_config=conv_config(SIZES["tiny"].vision_hidden))


def test_loads_through_from_pretrained_with_every_weight(checkpoint):
    from safetensors.torch import load_file

    from vidmini.families.llava_mini.conv_vision import ConvVisionTower
    from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM

    model, info = LlavaMiniForCausalLM.from_pretrained(checkpoint, _vidmini_loading_info=True)
    assert isinstance(model.model.vision_tower, ConvVisionTower)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    saved = load_file(f"{checkpoint}/model.safetensors")
    tower = {k: v for k, v in saved.items() if k.startswith("model.vision_tower.")}
    assert any(".stem." in k for k in tower) and "model.vision_tower.positions" in tower
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tower.items())
    assert model.model.vision_tower.num_patches == 49 == model.vision_prefix_len - 1
    vision, compressed = model.encode_frames(torch.randn(2, 3, 336, 336))
    assert vision.shape == (2, 49, model.config.hidden_size) and compressed.shape == (2, 1, model.config.hidden_size)


def test_a_grid_the_stem_does_not_tile_is_refused():
    from vidmini.families.llava_mini.conv_vision import ConvVisionTower

    with pytest.raises(ValueError, match="does not tile"):
        ConvVisionTower(conv_config(16, patch_size=64))  # 21x21 stem cells cannot make a 5x5 grid


def test_ask_runs_end_to_end_on_a_conv_tower_checkpoint(cli, checkpoint):
    r = cli("ask", "sample_videos/shapes.mp4", "What colour is the star?", "--model", checkpoint, "--json",
            "--max-new-tokens", "3")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["frames_used"] == 8 and len(out["answers"]) == 1


def test_prefusion_tokens_rank_the_conv_towers_cells_by_the_attention_they_receive(checkpoint):
    """--prefusion-tokens on the demo's tower: it once read CLIP's layers and failed with an AttributeError."""
    from vidmini.families.llava_mini.llava_mini import LlavaMiniForCausalLM
    from vidmini.reduce.prefusion import encode_frames_reduced

    model = LlavaMiniForCausalLM.from_pretrained(checkpoint)
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    tower = model.model.vision_tower
    signals = tower.zip_signals(pixels)
    torch.testing.assert_close(signals.hidden, tower(pixels))  # the features the compressor reads, unchanged
    assert signals.scores.shape == (2, 49) and signals.metric.shape == (2, 49, tower.config["hidden_size"] // 2)
    torch.testing.assert_close(signals.scores.sum(1), torch.ones(2))  # a mean of softmax rows
    vision, compressed = model.encode_frames(pixels)
    kept, kept_compressed, positions = encode_frames_reduced(model, pixels, 49)  # every cell: the exact path
    assert positions.tolist() == [list(range(49))] * 2
    torch.testing.assert_close(kept, vision)
    torch.testing.assert_close(kept_compressed, compressed)
    fewer, _, positions = encode_frames_reduced(model, pixels, 12)
    assert fewer.shape == (2, 12, model.config.hidden_size) and (positions.diff(dim=1) > 0).all()


def test_ask_with_prefusion_tokens_on_a_conv_tower_checkpoint(cli, checkpoint):
    r = cli("ask", "sample_videos/shapes.mp4", "What colour is the star?", "--model", checkpoint, "--json",
            "--max-new-tokens", "3", "--prefusion-tokens", "16")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["frames_used"] == 8
