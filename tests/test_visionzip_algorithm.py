"""VisionZip's selection and merge on small hand-built inputs (worked out by hand), and properties on random ones."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import MERGE_TIE, lead, leftovers

from vidmini.reduce import visionzip as vz
from vidmini.reduce.visionzip import (
    Budget,
    BudgetClamped,
    cls_attention_scores,
    plan_budget,
    received_attention_scores,
    select_and_merge,
    stride_targets,
    target_similarity,
)


def features(n: int, width: int = 3) -> torch.Tensor:
    """Token i's feature is [i, 10 i, 100 i, ...]: every sum of tokens can be read back by eye. [1, N, width]"""
    base = torch.tensor([10.0**k for k in range(width)])
    return (torch.arange(n, dtype=torch.float32)[:, None] * base)[None]


# ---- scores, by hand ---------------------------------------------------------------------------------------


def test_cls_scores_sum_the_cls_row_over_heads():
    # Head 0: q = 1 and keys 0, ln 2, ln 3 give logits 0, ln 2, ln 3 -> softmax 1/6, 2/6, 3/6.
    # Head 1: q = 0 -> uniform 1/3. The sum over heads: 1/2, 2/3, 5/6 (CLS->CLS included in the softmax).
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)  # [B, H, 1, d]
    k = torch.tensor([0.0, math.log(2), math.log(3)]).view(1, 1, 3, 1).expand(1, 2, 3, 1)  # [B, H, N, d]
    scores = cls_attention_scores(q, k, scale=1.0)
    torch.testing.assert_close(scores, torch.tensor([[1 / 2, 2 / 3, 5 / 6]]))


def test_received_scores_average_over_heads_and_queries():
    # One head; query 0 sees logits (0, 0) -> (1/2, 1/2); query 1 sees (0, ln 3) -> (1/4, 3/4).
    # Mean over the two queries: token 0 receives 3/8, token 1 receives 5/8.
    q = torch.tensor([0.0, math.log(3)]).view(1, 1, 2, 1)
    k = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    torch.testing.assert_close(received_attention_scores(q, k, scale=1.0), torch.tensor([[3 / 8, 5 / 8]]))


def test_received_scores_do_not_depend_on_the_chunk(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 37, 4, generator=g), torch.randn(2, 3, 37, 4, generator=g)
    whole = received_attention_scores(q, k, 0.5)
    monkeypatch.setattr(vz, "_RECEIVED_CHUNK_ELEMENTS", 2 * 3 * 37 * 5)  # 5 queries per chunk, a ragged last one
    torch.testing.assert_close(received_attention_scores(q, k, 0.5), whole)
    torch.testing.assert_close(whole.sum(dim=1), torch.ones(2))  # each query hands out 1 per head


# ---- selection and merge, by hand --------------------------------------------------------------------------


def test_cls_is_kept_and_counted_and_ties_go_to_the_lower_index():
    # CLS + 5 patches. Patches 2, 3 and 5 tie at 0.5; D = 3 is CLS + two of them -> 2 and 3.
    hidden = features(6)
    scores = torch.tensor([[-9.0, 0.1, 0.5, 0.5, 0.2, 0.5]])  # CLS's own score is ignored, even if lowest
    metric = torch.ones(1, 6, 2)
    tokens, idx = select_and_merge(hidden, metric, scores, dominant=3, contextual=1, has_cls=True)
    assert idx.tolist() == [[0, 2, 3]]
    # Leftovers 1, 4, 5 (R = 3), C = 1: step 3, the target is leftover 0 = token 1; 4 and 5 are its members.
    expected_ctx = hidden[0, 1] + (hidden[0, 4] + hidden[0, 5]) / 2
    torch.testing.assert_close(tokens[0], torch.stack([hidden[0, 0], hidden[0, 2], hidden[0, 3], expected_ctx]))


def test_without_cls_token_zero_is_an_ordinary_patch():
    hidden = features(4)
    scores = torch.tensor([[0.0, 0.3, 0.1, 0.2]])
    _, idx = select_and_merge(hidden, torch.ones(1, 4, 2), scores, dominant=2, contextual=0, has_cls=False)
    assert idx.tolist() == [[1, 3]]


def test_merge_uses_cosine_of_the_metric_and_first_target_on_ties():
    # No CLS, 8 tokens, dominant 3 and 6. Leftovers 0 1 2 4 5 7 (R = 6), C = 2: step 3, targets 0 and 4.
    hidden = features(8)
    scores = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    metric = torch.zeros(1, 8, 2)
    metric[0, 0] = torch.tensor([1.0, 0.0])  # target A
    metric[0, 4] = torch.tensor([0.0, 10.0])  # target B; long, so a dot product would favour it
    metric[0, 1] = torch.tensor([1.0, 0.5])  # cos A 0.89 > cos B 0.45 (dot: A 1 < B 5) -> A
    metric[0, 2] = torch.tensor([0.1, 3.0])  # -> B
    metric[0, 5] = torch.tensor([2.0, 2.0])  # equal cosine -> the first target, A
    metric[0, 7] = torch.tensor([0.0, 0.0])  # zero norm: similarity 0 to both -> A, and no NaN
    metric[0, 3] = metric[0, 6] = torch.tensor([5.0, 5.0])  # dominant: never merged
    tokens, idx = select_and_merge(hidden, metric, scores, dominant=2, contextual=2, has_cls=False)
    assert idx.tolist() == [[3, 6]]
    ctx_a = hidden[0, 0] + (hidden[0, 1] + hidden[0, 5] + hidden[0, 7]) / 3  # target PLUS member mean
    ctx_b = hidden[0, 4] + hidden[0, 2]
    torch.testing.assert_close(tokens[0], torch.stack([hidden[0, 3], hidden[0, 6], ctx_a, ctx_b]))


def test_a_target_without_members_stays_as_it_is():
    # R == C: every leftover is a target, nothing is merged; output = dominant, then leftovers in order.
    hidden = features(5)
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.2]])
    tokens, idx = select_and_merge(hidden, torch.randn(1, 5, 2), scores, dominant=3, contextual=2, has_cls=True)
    assert idx.tolist() == [[0, 1, 3]]
    torch.testing.assert_close(tokens[0], hidden[0, [0, 1, 3, 2, 4]])


def test_stride_targets_are_floored_and_front_biased():
    # The spec's example: D = 54, C = 10 on 577 tokens -> R = 523, step 52, targets 0 ... 468.
    assert stride_targets(523, 10).tolist() == list(range(0, 469, 52))
    assert stride_targets(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert stride_targets(7, 3).tolist() == [0, 2, 4]


def test_each_row_of_a_batch_selects_on_its_own():
    hidden = torch.cat([features(4), -features(4)])  # [2, 4, 3]
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.5], [0.0, 0.9, 0.1, 0.5]])
    tokens, idx = select_and_merge(hidden, torch.ones(2, 4, 2), scores, 2, 1, has_cls=True)
    assert idx.tolist() == [[0, 2], [0, 1]]
    torch.testing.assert_close(tokens[0, 2], hidden[0, 1] + hidden[0, 3])  # leftovers 1, 3: target 1 + member 3
    torch.testing.assert_close(tokens[1, 2], hidden[1, 2] + hidden[1, 3])


# ---- budget guards -----------------------------------------------------------------------------------------


def test_budget_guards():
    assert plan_budget(577, 54, 10, has_cls=True) == Budget(54, 10)
    assert plan_budget(577, 54, 0, has_cls=True) == Budget(54, 0)  # C = 0: no contextual tokens
    assert plan_budget(577, 570, 30, has_cls=True) == Budget(570, 7)  # C > R: C becomes R
    assert plan_budget(577, 600, 5, has_cls=True) == Budget(577, 0)  # D > N: everything is dominant
    assert plan_budget(729, 0, 8, has_cls=False) == Budget(0, 8)  # no CLS: all-contextual is allowed
    for bad in [(-1, 3, False), (0, 0, False), (0, 4, True)]:
        with pytest.raises(ValueError):
            plan_budget(577, bad[0], bad[1], has_cls=bad[2])


def test_budget_larger_than_the_tokens_returns_every_token_once_and_warns():
    hidden = features(6)
    scores = torch.tensor([[0.0, 0.1, 0.6, 0.3, 0.2, 0.5]])
    with pytest.warns(BudgetClamped, match="using 2\\+4"):
        tokens, idx = select_and_merge(hidden, torch.randn(1, 6, 2), scores, 2, 10, has_cls=True)
    assert idx.tolist() == [[0, 2]]
    torch.testing.assert_close(tokens[0], hidden[0, [0, 2, 1, 3, 4, 5]])
    with pytest.warns(BudgetClamped):
        tokens, idx = select_and_merge(hidden, torch.randn(1, 6, 2), scores, 9, 1, has_cls=True)
    assert idx.tolist() == [list(range(6))]
    torch.testing.assert_close(tokens, hidden)


def test_zero_contextual_returns_the_dominant_tokens_without_warning():
    hidden = features(6)
    scores = torch.tensor([[0.0, 0.1, 0.6, 0.3, 0.2, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens, idx = select_and_merge(hidden, torch.randn(1, 6, 2), scores, 3, 0, has_cls=True)
    assert idx.tolist() == [[0, 2, 5]]
    torch.testing.assert_close(tokens, hidden[:, [0, 2, 5]])


def test_all_contextual_without_cls():
    hidden = features(4)
    metric = torch.tensor([[[1.0, 0.0], [0.2, 1.0], [0.0, 1.0], [1.0, 0.3]]])
    tokens, idx = select_and_merge(hidden, metric, torch.zeros(1, 4), 0, 2, has_cls=False)
    assert idx.shape == (1, 0)
    # R = 4, C = 2: step 2, targets 0 (along x) and 2 (along y); 1 points along y, 3 along x.
    torch.testing.assert_close(tokens[0], torch.stack([hidden[0, 0] + hidden[0, 3], hidden[0, 2] + hidden[0, 1]]))


def test_half_precision_stays_finite_and_keeps_its_dtype():
    hidden = features(6).half()
    metric = torch.zeros(1, 6, 2, dtype=torch.float16)  # all-zero norms: the reference gives NaN here
    scores = torch.tensor([[0.0, 0.1, 0.6, 0.3, 0.2, 0.5]], dtype=torch.bfloat16)
    tokens, _ = select_and_merge(hidden, metric, scores, 2, 2, has_cls=True)
    assert tokens.dtype == torch.float16 and torch.isfinite(tokens).all()


# ---- properties on random inputs, checked against a plain per-token loop of the spec ----------------------


def spec_loop(hidden, metric, scores, d, c, has_cls):
    """The spec's formulas as a slow, obvious loop over one sample (no batching, no tensor tricks)."""
    n = hidden.shape[0]
    candidates = range(1, n) if has_cls else range(n)
    ranked = sorted(candidates, key=lambda i: (-float(scores[i]), i))
    keep = sorted(([0] if has_cls else []) + ranked[: d - (1 if has_cls else 0)])
    rest = [i for i in range(n) if i not in keep]
    out = [hidden[i] for i in keep]
    if c == 0:
        return torch.stack(out), keep
    step = max(1, len(rest) // c)
    targets = [rest[p] for p in range(0, len(rest), step)][:c]
    members = {t: [] for t in targets}
    for i in rest:
        if i in members:
            continue
        u = metric[i] / metric[i].norm()
        sims = [float(u @ (metric[t] / metric[t].norm())) for t in targets]
        members[targets[sims.index(max(sims))]].append(i)
    for t in targets:
        mean = torch.stack([hidden[i] for i in members[t]]).mean(0) if members[t] else torch.zeros_like(hidden[t])
        out.append(hidden[t] + mean)
    return torch.stack(out), keep


@pytest.mark.parametrize("has_cls", [True, False])
def test_properties_on_random_inputs(has_cls):
    g = torch.Generator().manual_seed(7)
    for trial in range(40):
        n = int(torch.randint(2, 60, (1,), generator=g))
        b = int(torch.randint(1, 4, (1,), generator=g))
        d = int(torch.randint(1, n + 3, (1,), generator=g))
        c = int(torch.randint(0, n + 3, (1,), generator=g))
        hidden = torch.randn(b, n, 5, generator=g)
        metric = torch.randn(b, n, 3, generator=g)
        scores = torch.rand(b, n, generator=g).round(decimals=1)  # coarse: plenty of ties
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BudgetClamped)
            tokens, idx = select_and_merge(hidden, metric, scores, d, c, has_cls)
        budget = plan_budget(n, d, c, has_cls)
        assert tokens.shape == (b, budget.total, 5) and idx.shape == (b, budget.dominant)
        if budget.contextual >= 2 and n > budget.total:  # leftovers with a choice of targets
            # The spec loop's similarities round apart from the batched ones: every choice leads by more than that.
            assert lead(target_similarity(leftovers(metric, idx), budget.contextual)) > MERGE_TIE  # measured 3e-3
        assert (idx[:, 1:] > idx[:, :-1]).all(), "ascending, no repeats"
        for s in range(b):
            kept = idx[s].tolist()
            if has_cls:
                assert kept[0] == 0
            patches = [i for i in kept if not (has_cls and i == 0)]
            dropped = [i for i in range(1 if has_cls else 0, n) if i not in kept]
            if patches and dropped:  # dominant = top-scored
                assert min(scores[s, patches]) >= max(scores[s, dropped])
            torch.testing.assert_close(tokens[s, : budget.dominant], hidden[s, kept])
            want, want_keep = spec_loop(hidden[s], metric[s], scores[s], budget.dominant, budget.contextual, has_cls)
            assert kept == want_keep, (trial, s)
            torch.testing.assert_close(tokens[s], want, msg=f"trial {trial} sample {s}")
