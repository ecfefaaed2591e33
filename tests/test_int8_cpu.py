"""--quantize 8bit on a CPU: weight-only int8 LLM layers (vidmini.families.int8_cpu), and --quantize auto."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def _linear(rows: int, cols: int, seed: int = 0) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(rows, cols, generator=gen) * 0.05)
    return layer


def test_rows_round_to_the_nearest_step_of_their_own_scale():
    from vidmini.families.int8_cpu import quantize_rows

    w = _linear(96, 80).weight
    q, scales = quantize_rows(w)  # [96, 80] int8, [96]
    assert q.dtype == torch.int8 and scales.shape == (96,)
    assert int(q.abs().amax(1).min()) == 127  # each row's largest weight takes the full range
    err = (q.float() * scales[:, None] - w).abs()
    assert bool((err <= scales[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 200])
def test_both_paths_compute_the_product_of_the_int8_weights(rows):
    """Few rows (decode: torch's int8 kernel, bfloat16 activations) and many (prefill: the weights expanded, one
    ordinary product) give x @ (int8 * scale)^T; the kernel's path within bfloat16's rounding."""
    from vidmini.families.int8_cpu import FEW_ROWS, Int8Linear

    layer = Int8Linear(_linear(96, 80))
    x = torch.randn(2, rows, 80, generator=torch.Generator().manual_seed(1))  # [B, n, in]
    expected = F.linear(x, layer.weight.float() * layer.scales[:, None])  # [B, n, out]
    got = layer(x)
    assert got.shape == (2, rows, 96) and got.dtype == torch.float32
    if 2 * rows > FEW_ROWS:
        assert torch.allclose(got, expected, atol=1e-5)
    else:
        assert torch.allclose(got, expected, rtol=0.02, atol=0.02 * float(expected.abs().max()))


def test_a_layer_with_a_bias_is_refused_in_one_line():
    from vidmini.errors import ModelLoadError
    from vidmini.families.int8_cpu import Int8Linear

    with pytest.raises(ModelLoadError, match="use --quantize none"):
        Int8Linear(nn.Linear(8, 4, bias=True))


def test_a_missing_kernel_fails_at_load_with_one_line(monkeypatch):
    from vidmini.errors import ModelLoadError
    from vidmini.families import int8_cpu

    monkeypatch.delattr(torch, "_weight_int8pack_mm")  # a torch release without it (vidmini.infra.internals)
    with pytest.raises(ModelLoadError, match="lacks") as err:
        int8_cpu.check_kernel()
    assert "\n" not in str(err.value)
    monkeypatch.setattr(int8_cpu, "_int8_mm", lambda x, w, s: torch.zeros(len(x), len(w), dtype=x.dtype))
    with pytest.raises(ModelLoadError, match="other products"):
        int8_cpu.check_kernel()


def test_8bit_on_cpu_narrows_the_llm_and_keeps_vision_full(tiny_checkpoint):
    from vidmini.families.int8_cpu import Int8Linear
    from vidmini.families.loading import LoadOptions, load_model

    full, _ = load_model(LoadOptions(model=str(tiny_checkpoint), device="cpu"))
    narrow, _ = load_model(LoadOptions(model=str(tiny_checkpoint), device="cpu", quantize="8bit"))
    layer = narrow.model.layers[0]
    assert isinstance(layer.mlp.up_proj, Int8Linear) and isinstance(layer.self_attn.q_proj, Int8Linear)
    assert isinstance(narrow.lm_head, Int8Linear) and isinstance(narrow.model.prefusion_layers[0].mlp.down_proj, Int8Linear)
    assert layer.mlp.up_proj.weight.dtype == torch.int8
    assert narrow.model.mm_projector[0].weight.dtype == torch.float32  # vision side and projector untouched
    assert narrow.model.embed_tokens.weight.dtype == torch.float32
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        a = full.language_forward(input_ids=ids).logits  # [1, 6, V]
        b = narrow.language_forward(input_ids=ids).logits
    assert a.shape == b.shape
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())  # int8 rounding, not another model


def test_auto_is_what_the_checkpoint_declares_on_a_cpu(tiny_checkpoint, tmp_path, monkeypatch):
    from vidmini.errors import ModelLoadError
    from vidmini.families.int8_cpu import kernel_is_fast
    from vidmini.families.loading import LoadOptions, resolve_quantize

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    assert resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="auto")).quantize == "none"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "cpu_quantize": "8bit"}))
    assert resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="auto")).quantize == "8bit"
    assert resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="none")).quantize == "none"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")  # no vector kernels: slower
    assert not kernel_is_fast()
    assert resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="auto")).quantize == "none"
    assert resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="8bit")).quantize == "8bit"
    (folder / "config.json").write_text(json.dumps({**config, "cpu_quantize": "2bit"}))
    with pytest.raises(ModelLoadError, match="cpu_quantize '2bit'"):
        resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="auto"))
    with pytest.raises(ModelLoadError, match="unknown --quantize"):
        resolve_quantize(LoadOptions(model=str(folder), device="cpu", quantize="3bit"))


def test_the_demo_model_declares_int8_on_cpu():
    """The shipped demo's answers were measured with int8 weights (its model card, vidmini/demo/weights/README.md): `auto` picks them."""
    from vidmini.demo.checkpoint import WEIGHTS_DIR

    assert json.loads((WEIGHTS_DIR / "config.json").read_text())["cpu_quantize"] == "8bit"


def test_the_dry_run_counts_int8_weights_on_cpu(tiny_checkpoint, tmp_path):
    from vidmini.infra.memory_report import dry_run
    from vidmini.inputs.sources import Sampling

    image = tmp_path / "frame.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    args = (str(tiny_checkpoint), str(image), Sampling(), "auto")
    full = dry_run(*args, "none", "cpu", None, 8, ["?"])
    narrow = dry_run(*args, "8bit", "cpu", None, 8, ["?"])
    assert narrow["quantize"] == "8bit" and full["quantize"] == "none"
    assert narrow["weights_bytes"] < full["weights_bytes"]
