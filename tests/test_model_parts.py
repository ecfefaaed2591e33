"""Model parts the fixture cannot reach: compressor size > 1, packed multi-prompt pre-fusion, config switches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidmini.families.llava_mini.compressor import Compressor, sincos_2d
from vidmini.families.llava_mini.prefusion import FusionLayout


def reference_compressor(comp: Compressor, x: torch.Tensor) -> torch.Tensor:
    """The spec's formula on torch's own nn.MultiheadAttention, loaded with the same weights."""
    dim = comp.query.shape[1]
    mha = torch.nn.MultiheadAttention(dim, comp.attn.num_heads, batch_first=True)
    mha.load_state_dict({"in_proj_weight": comp.attn.in_proj_weight, "in_proj_bias": comp.attn.in_proj_bias,
                         "out_proj.weight": comp.attn.out_proj.weight, "out_proj.bias": comp.attn.out_proj.bias})
    c, n = comp.grid, int(math.isqrt(x.shape[1]))
    table = comp.pos_embed.float().reshape(1, c, c, dim).permute(0, 3, 1, 2)
    key_pe = F.interpolate(table, size=(n, n), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(-1, dim)
    kv = comp.ln_kv(x)
    q = (comp.ln_q(comp.query) + comp.pos_embed).unsqueeze(0).expand(len(x), -1, -1)
    return mha(q, kv + key_pe, kv, need_weights=False)[0]


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_compressor_matches_multihead_attention(grid):
    torch.manual_seed(grid)
    comp = Compressor(grid, dim=64, heads=8)
    with torch.no_grad():
        for p in comp.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    x = torch.randn(2, 576, 64)
    ours = comp(x)
    assert ours.shape == (2, grid * grid, 64)
    torch.testing.assert_close(ours, reference_compressor(comp, x), atol=1e-5, rtol=1e-5)


def test_key_positions_matter_for_grid_above_one():
    torch.manual_seed(0)
    comp = Compressor(2, dim=64, heads=8)
    with torch.no_grad():
        for p in comp.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    x = torch.randn(1, 576, 64)
    flipped = x.view(1, 24, 24, 64).flip(1).reshape(1, 576, 64)  # same patches, other places
    assert (comp(x) - comp(flipped)).abs().max() > 1e-3


def test_sincos_table_layout():
    one = sincos_2d(1024, 1)[0]
    assert np.array_equal(one, np.array([0.0] * 256 + [1.0] * 256 + [0.0] * 256 + [1.0] * 256))
    two = sincos_2d(16, 2)  # rows in raster order (h, w); first half of channels = w
    assert np.allclose(two[1, :8], two[3, :8]) and np.allclose(two[2, 8:], two[3, 8:])
    assert not np.allclose(two[0, :8], two[1, :8])


def masked_prefusion(model, vision, compressed, ids):
    """The reference's way: every prompt token present, padding (id <= 0) removed as keys, positions skip it."""
    text = model.model.embed_tokens(torch.tensor(ids).clamp(min=0))  # [L, H]
    x = torch.cat([vision, compressed, text.unsqueeze(0).expand(len(vision), -1, -1)], 1)  # [B, S, H]
    pad = torch.tensor([False] * (vision.shape[1] + compressed.shape[1]) + [t <= 0 for t in ids])
    positions = torch.cumsum(~pad, 0) - 1
    positions[pad] = 1
    allowed = torch.ones(len(pad), len(pad), dtype=torch.bool).tril() & ~pad[None, :]
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    cos_sin = model.model.rotary_emb(x, positions[None])
    for layer in model.model.prefusion_layers:
        x = layer(x, attention_mask=mask, position_ids=positions[None], position_embeddings=cos_sin)
    L = len(ids)
    fused = torch.where(pad[-L:, None], text, x[:, -L:])
    return x[:, -L - compressed.shape[1] : -L], fused


@pytest.mark.parametrize("compressor_size", [1, 2])
def test_packed_prompts_equal_each_prompt_alone_and_the_masked_reference(compressor_size):
    from vidmini.testing.tiny_checkpoint import build_model

    model = build_model("tiny", compressor_size=compressor_size, seed=3)
    prompts = [[7, 8, 9, -200, 0, 11, 12, 13], [7, 8, 9, -200, 0, 21, 22], [7, 5, -200, 30, 0, 31, 32, 33, 34]]
    pv = torch.randn(2, 3, 336, 336)
    with torch.no_grad():
        vision, compressed = model.encode_frames(pv)
        assert compressed.shape == (2, compressor_size**2, 64)
        layout = FusionLayout.build(prompts)
        frames, text = model.fuse(vision, compressed, layout)
        for q, ids in enumerate(prompts):
            ref_frames, ref_fused = masked_prefusion(model, vision, compressed, ids)
            torch.testing.assert_close(frames, ref_frames, atol=1e-5, rtol=1e-5)
            ours = torch.stack([model.fused_prompt(layout, q, text[b]) for b in range(2)])
            torch.testing.assert_close(ours, ref_fused, atol=1e-5, rtol=1e-5)


def test_shared_prefix_is_computed_once():
    layout = FusionLayout.build([[1, 2, 3, -200, 4, 5], [1, 2, 3, -200, 6]])
    assert layout.text_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert layout.owner.tolist() == [-1, -1, -1, 0, 0, 1]
    assert layout.local_pos.tolist() == [0, 1, 2, 3, 4, 3]


@pytest.mark.parametrize(
    "overrides",
    [dict(mm_vision_select_layer=-1), dict(mm_projector_type="linear"),
     dict(mm_projector_type="mlp3x_gelu"), dict(prefusion_layer_num=1)],
)
def test_config_switches_change_the_computation(overrides):
    from vidmini.testing.tiny_checkpoint import build_model

    pv = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[395, 7, 8, -200, 9, 10]])
    base = build_model("tiny", seed=1)
    other = build_model("tiny", seed=1, **overrides)
    with torch.no_grad():
        a = base(input_ids=ids, pixel_values=pv).logits
        b = other(input_ids=ids, pixel_values=pv).logits
    assert a.shape == b.shape
    assert (a - b).abs().max() > 1e-3


def test_unsupported_switches_are_refused_clearly():
    from vidmini.testing.tiny_checkpoint import build_model

    with pytest.raises(ValueError, match="cls_patch"):
        build_model("tiny", mm_vision_select_feature="cls_patch")
    with pytest.raises(ValueError, match="mm_projector_type"):
        build_model("tiny", mm_projector_type="qformer")


def test_select_layer_runs_only_needed_layers():
    from vidmini.testing.tiny_checkpoint import build_model

    model = build_model("tiny", seed=1)
    tower = model.model.vision_tower
    assert tower.layers_to_run == 1  # 2 layers, select -2 -> output of layer 0
    pv = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        full = tower.vision_tower.vision_model(pixel_values=pv, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(tower(pv), full)


def test_stitch_parts_places_each_sub_image_in_the_raster():
    """Four 2x2 sub-images (row-major: top-left, top-right, bottom-left, bottom-right) into one 4x4 raster,
    worked out by hand: value = 10 * part + position in the part."""
    from vidmini.families.llava_mini.llava_mini import stitch_parts

    parts = torch.tensor([[10 * p + i for i in range(4)] for p in range(4)], dtype=torch.float32)  # [4, 4]
    raster = stitch_parts(parts.view(1, 4, 4, 1), 2)  # [1, 16, 1]
    assert raster.view(4, 4).tolist() == [[0, 1, 10, 11], [2, 3, 12, 13], [20, 21, 30, 31], [22, 23, 32, 33]]


def test_hd_mode_stitches_sub_images():
    from vidmini.testing.tiny_checkpoint import build_model

    model = build_model("tiny", seed=2, resolution_ratio=2)
    pv = torch.randn(1, 5, 3, 336, 336)  # 2x2 sub-images + the whole image
    with torch.no_grad():
        vision, compressed = model.encode_frames(pv)
        assert vision.shape == (1, 5 * 576, 64) and compressed.shape == (1, 1, 64)
        assert model.vision_prefix_len == 5 * 576 + 1
        out = model(input_ids=torch.tensor([[395, 7, -200, 9]]), pixel_values=pv).logits
    assert out.shape == (1, 4, model.config.vocab_size)


@pytest.mark.parametrize("mean,std", [((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                                      ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_normalize_is_bit_exact_with_the_reference_table_for_every_value(mean, std):
    """normalize computes in float32; the reference divides in float64 and rounds. Every uint8 value of every
    channel (all that can occur) gives the same float32."""
    from vidmini.inputs.preprocess import normalization_table, normalize, pixel_stats

    every = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3)  # [1, 16, 16, 3]
    got = normalize(every, pixel_stats(mean, std))  # [1, 3, 16, 16]
    table = normalization_table(mean, std)  # [3, 256]
    assert torch.equal(got.reshape(3, 256), table)
