"""VisionZip against the reference implementation's own outputs (tests/fixtures/visionzip_reference.npz).

The fixture holds a tiny random 24-layer CLIP (577 tokens, like CLIP-L/14-336), its inputs, and what the
reference (dvlab-research/VisionZip, run under transformers 4.37.2) returned for each budget; see
tests/fixtures/visionzip_reference.README.md for how it was made. Here the same weights run in this transformers (SDPA).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MERGE_TIE, leftovers

from vidmini.reduce.visionzip import (
    layer_signals,
    merge_assigned,
    reduce_tokens,
    select_and_merge,
    target_similarity,
)

FIXTURE = Path(__file__).parent / "fixtures" / "visionzip_reference.npz"
SCORE_TOL = 1e-8


@pytest.fixture(scope="module")
def reference():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    data = np.load(FIXTURE)
    config = CLIPVisionConfig(**json.loads(str(data["config_json"])))
    model = CLIPVisionModel(config).eval()
    # The reference ran transformers 4.37, where CLIPVisionModel nested everything under `vision_model.`.
    weights = {
        key.removeprefix("weight/vision_model."): torch.from_numpy(data[key])
        for key in data.files
        if key.startswith("weight/")
    }
    model.load_state_dict(weights, strict=True)
    assert model.config._attn_implementation == "sdpa"
    return model, data


def budgets(data):
    return [tuple(int(v) for v in row) for row in data["budgets"]]


def test_fixture_covers_the_paper_budgets(reference):
    _, data = reference
    assert {(54, 10), (108, 20), (128, 32), (162, 30)} <= set(budgets(data))


def test_scores_equal_the_reference_cls_attention(reference):
    model, data = reference
    pixels = torch.from_numpy(data["pixel_values"])
    signals = layer_signals(model, pixels, layer=-2)
    assert signals.has_cls and signals.hidden.shape[1] == 577
    ours = signals.scores[:, 1:].numpy()  # [B, 576] CLS column dropped, as the reference ranks
    np.testing.assert_allclose(ours, data["cls_scores"], rtol=0, atol=SCORE_TOL)  # measured 4.7e-9
    # So the dominant sets are determined: at every budget's cut the reference's scores part by more than 2 x SCORE_TOL.
    ranked = -np.sort(-data["cls_scores"], axis=1)  # [B, 576] descending
    for d, _ in budgets(data):
        kept = d - 1  # patches kept beside CLS
        if 0 < kept < ranked.shape[1]:
            gap = ranked[:, kept - 1] - ranked[:, kept]
            assert (gap > 2 * SCORE_TOL).all(), (d, gap)  # smallest: 1.7e-7 at 500+2


PAPER = [(54, 10), (108, 20), (128, 32), (162, 30)]


def contextual_choices(signals, idx, c):
    """Every contextual output the merge may give, per image, when each near-tied leftover may join any of its tied
    targets: a list (per image) of [C, F] arrays, one per way of resolving that image's ties."""
    hidden = leftovers(signals.hidden, idx)  # [B, R, F]
    similarity = target_similarity(leftovers(signals.metric, idx), c).double()  # [B, R - C, C]
    best = similarity.max(dim=2, keepdim=True).values
    # MERGE_TIE: the reference's own fp32 rounding is of the same size as ours, well under it.
    near = similarity >= best - MERGE_TIE  # [B, R - C, C]: the targets each leftover may join
    choices = []
    for b in range(len(hidden)):
        tied = near[b].sum(dim=1).gt(1).nonzero()[:, 0].tolist()  # rows with more than one candidate
        assert len(tied) <= 4, f"{len(tied)} near-tied leftovers: too many to enumerate"
        assign = similarity[b].argmax(dim=1)  # [R - C]; determined wherever the row is not tied
        outputs = []
        for pick in itertools.product(*(near[b, row].nonzero()[:, 0].tolist() for row in tied)):
            assign[tied] = torch.tensor(pick, dtype=assign.dtype)
            outputs.append(merge_assigned(hidden[b : b + 1], assign[None], c)[0].numpy())
        choices.append(outputs)
    return choices


def check(data, signals, d, c, tokens, idx):
    """Dominant indices and tokens equal the reference's; each image's contextual tokens equal one of the outputs
    the merge may give at its near-ties, and so do the reference's (so wherever the best target leads by more than
    MERGE_TIE, both assign alike and the features are equal there)."""
    ref_tokens = data[f"tokens/{d}_{c}"]
    ref_idx = data[f"indices/{d}_{c}"]  # [0, patches in descending score]; ours are ascending
    assert tokens.shape == ref_tokens.shape == (data["pixel_values"].shape[0], d + c, 24), (d, c)
    assert (ref_idx[:, 0] == 0).all()
    np.testing.assert_array_equal(idx.numpy(), np.sort(ref_idx, axis=1), err_msg=f"{d}+{c}")
    np.testing.assert_allclose(tokens[:, :d].numpy(), ref_tokens[:, :d], rtol=0, atol=1e-4, err_msg=f"{d}+{c}")
    if c == 0:
        return
    for b, outputs in enumerate(contextual_choices(signals, idx, c)):
        for who, got in (("ours", tokens[b, d:].numpy()), ("reference", ref_tokens[b, d:])):
            assert any(np.abs(got - out).max() <= 1e-4 for out in outputs), f"{d}+{c} image {b}: {who}"


@pytest.fixture(scope="module")
def signals(reference):
    model, data = reference
    return layer_signals(model, torch.from_numpy(data["pixel_values"]), layer=-2)


@pytest.mark.parametrize("d,c", PAPER)
def test_public_function_equals_the_reference_on_the_paper_budgets(reference, signals, d, c):
    model, data = reference
    tokens, idx = reduce_tokens(model, torch.from_numpy(data["pixel_values"]), dominant=d, contextual=c, layer=-2)
    check(data, signals, d, c, tokens, idx)


def test_every_budget_equals_the_reference(reference, signals):
    # reduce_tokens is layer_signals + select_and_merge; read the layer once and try every budget on it.
    _, data = reference
    for d, c in budgets(data):
        check(data, signals, d, c, *select_and_merge(signals.hidden, signals.metric, signals.scores, d, c, True))
