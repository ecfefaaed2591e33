"""VisionZip on real transformers encoders: CLIP (CLS) and SigLIP (no CLS), any depth, wrapped or not.

The selection must come from the SDPA path: the model keeps its attention implementation, every layer up to the
read one goes through `scaled_dot_product_attention`, the later ones do not run, and the result equals what the
eager attention weights (`output_attentions=True`) give.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MERGE_TIE, lead, leftovers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.clip import modeling_clip
from transformers.models.siglip import modeling_siglip

from vidmini.reduce import BudgetClamped, UnsupportedEncoder, reduce_tokens
from vidmini.reduce.visionzip import layer_signals, select_and_merge, target_similarity

SMALL = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, image_size=32, patch_size=4)  # 8x8


def clip(layers=3, **kw) -> CLIPVisionModel:
    torch.manual_seed(layers)
    config = CLIPVisionConfig(num_hidden_layers=layers, initializer_factor=5.0, **SMALL, **kw)
    return CLIPVisionModel(config).eval()


def siglip(layers=3) -> SiglipVisionModel:
    torch.manual_seed(100 + layers)
    return SiglipVisionModel(SiglipVisionConfig(num_hidden_layers=layers, **SMALL)).eval()


def pixels(batch=2, seed=0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def eager_expectation(model, pv, index, has_cls, dominant, contextual):
    """The same selection computed from the eager attention weights and hidden states of every layer."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(pixel_values=pv, output_attentions=True, output_hidden_states=True)
        attn = out.attentions[index]  # [B, H, N, N]
        scores = attn[:, :, 0].sum(dim=1) if has_cls else attn.mean(dim=(1, 2))  # [B, N]
        layer = eager.encoder.layers[index]
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[index]))  # input of layer `index`
        metric = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(dim=2)  # [B, N, d]
        hidden = out.hidden_states[index + 1]  # output of layer `index`
    return scores, metric, select_and_merge(hidden, metric, scores, dominant, contextual, has_cls)


def cut_lead(scores, count, has_cls) -> float:
    """How far the last token kept as dominant leads the first one dropped, in score (smallest over the batch)."""
    ranked = scores.double().clone()  # [B, N]
    if has_cls:
        ranked[:, 0] = float("inf")
    ranked = ranked.sort(dim=1, descending=True).values
    return float((ranked[:, count - 1] - ranked[:, count]).min())


@pytest.fixture
def sdpa_spy(monkeypatch):
    """Counts SDPA calls; any eager attention call fails the test."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    def no_eager(*args, **kwargs):
        raise AssertionError("eager attention ran")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    monkeypatch.setattr(modeling_clip, "eager_attention_forward", no_eager)
    monkeypatch.setattr(modeling_siglip, "eager_attention_forward", no_eager)
    return calls


@pytest.mark.parametrize(
    "make,has_cls,layer,budget",
    [(clip, True, -2, (6, 3)), (clip, True, 0, (1, 4)), (siglip, False, -1, (6, 3)), (siglip, False, 1, (0, 5))],
)
def test_selection_runs_on_sdpa_and_equals_the_eager_attention(make, has_cls, layer, budget, sdpa_spy, monkeypatch):
    model = make(layers=4)
    assert model.config._attn_implementation == "sdpa"
    pv = pixels()
    tokens, idx = reduce_tokens(model, pv, *budget, layer=layer)
    index = layer % 4
    assert len(sdpa_spy) == index + 1, "every layer up to the read one on SDPA, none after it"
    assert model.config._attn_implementation == "sdpa"
    assert all(not l._forward_hooks and not l._forward_pre_hooks for l in model.encoder.layers)

    signals = layer_signals(model, pv, layer)
    monkeypatch.undo()  # the expectation below runs eager on purpose
    scores, metric, (want_tokens, want_idx) = eager_expectation(model, pv, index, has_cls, *budget)
    ranked = slice(1, None) if has_cls else slice(None)
    torch.testing.assert_close(signals.scores[:, ranked], scores[:, ranked], rtol=1e-5, atol=1e-6)
    # SDPA and eager kernels round apart: equal selections need the cut to lead by more than twice the scores'
    # tolerance, and every merge choice to lead by more than rounding.
    dominant, contextual = budget
    if int(has_cls) < dominant:
        assert cut_lead(scores, dominant, has_cls) > 2 * (1e-6 + 1e-5 * float(scores.abs().max()))  # measured 8e-5
    assert lead(target_similarity(leftovers(metric, want_idx), contextual)) > MERGE_TIE  # measured 1.6e-3
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(tokens, want_tokens, rtol=1e-4, atol=1e-5)


def test_clip_keeps_cls_first_and_siglip_has_none():
    tokens, idx = reduce_tokens(clip(), pixels(), dominant=5, contextual=2)
    assert tokens.shape == (2, 7, 32) and (idx[:, 0] == 0).all()
    signals = layer_signals(siglip(), pixels(), layer=-1)
    assert not signals.has_cls and signals.hidden.shape[1] == 64
    tokens, idx = reduce_tokens(siglip(), pixels(), dominant=5, contextual=2, layer=-1)
    assert tokens.shape == (2, 7, 32) and idx.shape == (2, 5)


@pytest.mark.parametrize("layers", [1, 2, 25])
def test_any_depth(layers):
    model = clip(layers)
    tokens, idx = reduce_tokens(model, pixels(1), dominant=4, contextual=2, layer=-1)
    assert tokens.shape == (1, 6, 32)
    if layers >= 2:
        reduce_tokens(model, pixels(1), dominant=4, contextual=2, layer=-2)
    with pytest.raises(IndexError):
        reduce_tokens(model, pixels(1), dominant=4, contextual=2, layer=layers)


def test_reads_the_requested_layer():
    model = clip(layers=3)
    pv = pixels()
    with torch.no_grad():
        states = model(pixel_values=pv, output_hidden_states=True).hidden_states  # embeddings, then each layer
    for layer in (0, 1, 2, -1, -2, -3):
        got = layer_signals(model, pv, layer).hidden
        torch.testing.assert_close(got, states[layer % 3 + 1])


def test_wrappers_holding_a_vision_model():
    inner = clip()
    wrapped = CLIPModel(CLIPConfig(vision_config=inner.config.to_dict(), text_config=dict(hidden_size=16,
        intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=50))).eval()
    wrapped.vision_model.load_state_dict(inner.state_dict())
    pv = pixels()
    a = reduce_tokens(inner, pv, 5, 2)
    b = reduce_tokens(wrapped, pv, 5, 2)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])

    holder = torch.nn.Module()
    holder.vision_model = siglip()
    tokens, _ = reduce_tokens(holder, pv, 3, 1, layer=-1)
    assert tokens.shape == (2, 4, 32)
    sig = SiglipModel(SiglipConfig(vision_config=SiglipVisionConfig(num_hidden_layers=2, **SMALL).to_dict(),
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=50))).eval()
    assert reduce_tokens(sig, pv, 3, 1, layer=-1)[0].shape == (2, 4, 32)


def test_not_a_vision_encoder_fails_loudly():
    with pytest.raises(UnsupportedEncoder, match="embeddings"):
        reduce_tokens(torch.nn.Linear(3, 3), pixels(), 3, 1)
    model = clip()
    del model.encoder.layers[1].self_attn.k_proj  # what a renamed projection in a new release would look like
    with pytest.raises(UnsupportedEncoder, match="k_proj"):
        reduce_tokens(model, pixels(), 3, 1)


def test_budget_over_the_token_count_warns_and_returns_every_token():
    model = siglip()
    with pytest.warns(BudgetClamped):
        tokens, idx = reduce_tokens(model, pixels(), dominant=60, contextual=10, layer=-1)
    assert tokens.shape == (2, 64, 32) and idx.shape == (2, 60)


def test_half_precision_model():
    model = clip().to(torch.bfloat16)
    tokens, idx = reduce_tokens(model, pixels().to(torch.bfloat16), dominant=5, contextual=3)
    assert tokens.dtype == torch.bfloat16 and torch.isfinite(tokens.float()).all() and tokens.shape == (2, 8, 32)


def test_concurrent_calls_on_one_model_do_not_see_each_others_hooks():
    from concurrent.futures import ThreadPoolExecutor

    model = clip(layers=4)
    inputs = [pixels(1, seed) for seed in range(6)]
    layers = [-1, -2, 0, 1, -1, 2]
    alone = [reduce_tokens(model, pv, 4, 2, layer=l) for pv, l in zip(inputs, layers)]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda a: reduce_tokens(model, a[0], 4, 2, layer=a[1]), zip(inputs, layers)))
    for (t1, i1), (t2, i2) in zip(alone, together):
        assert torch.equal(i1, i2) and torch.equal(t1, t2)
    assert all(not l._forward_hooks and not l._forward_pre_hooks for l in model.encoder.layers)
