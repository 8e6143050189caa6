"""Soft-NS / Soft-NC on a hand-built model whose masks are deterministic (keep-probabilities 0 or 1)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tasks.attribution.ops.metrics import distance, random_scores, soft_metrics, soft_ns_nc_from_distances


class SumModel(torch.nn.Module):
    """logits = (sum_i E_i) @ W: no positions, so the metric can be computed by hand."""

    def __init__(self, emb: np.ndarray, w: np.ndarray) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding.from_pretrained(torch.tensor(emb))
        self.w = torch.tensor(w)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, logits_to_keep=0, use_cache=False):
        logits = inputs_embeds.sum(1, keepdim=True) @ self.w  # (batch, 1, vocab)
        return SimpleNamespace(logits=logits)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _d(p, q):  # the original's distance: sum (sqrt p - sqrt q)^2 / sqrt 2
    return float(((np.sqrt(p) - np.sqrt(q)) ** 2).sum() / math.sqrt(2))


@pytest.fixture
def hand():
    rng = np.random.default_rng(0)
    emb, w = rng.normal(size=(5, 4)), rng.normal(size=(4, 6))
    return SumModel(emb, w), emb, w


def test_soft_metrics_by_hand(hand):
    # invariant: with w one-hot on position 1, masks are exact: p_S sees only E_1, p_C all but E_1,
    # p_0 nothing; Soft-NS = max(0, D0 - DS) / D0 and Soft-NC = DC / D0 with the sqrt(2) distance
    model, emb, w = hand
    ids = [0, 2, 4]
    scores = torch.tensor([0.0, 1.0, 0.0])
    e = emb[ids]
    q = _softmax(e.sum(0) @ w)
    p_s = _softmax(e[1] @ w)
    p_c = _softmax((e[0] + e[2]) @ w)
    p_0 = _softmax(np.zeros(6))
    d_0, d_s, d_c = _d(p_0, q), _d(p_s, q), _d(p_c, q)
    (got,) = soft_metrics(model, torch.tensor(ids), [scores], torch.Generator().manual_seed(0))
    assert got.soft_ns == pytest.approx(max(0.0, d_0 - d_s) / d_0, rel=1e-9)
    assert got.soft_nc == pytest.approx(d_c / d_0, rel=1e-9)


def test_full_and_empty_attributions(hand):
    # invariant: keeping everything gives NS = 1 and NC = 1 (complement keeps nothing = p_0)
    model, _, _ = hand
    ids = torch.tensor([1, 3])
    (got,) = soft_metrics(model, ids, [torch.tensor([1.0, 1.0])], torch.Generator().manual_seed(0))
    assert got.soft_ns == pytest.approx(1.0) and got.soft_nc == pytest.approx(1.0)


def test_nan_scores_give_the_original_values(hand):
    # invariant: NaN importance (unconverged ReAGent in the original) scores Soft-NS 0 and Soft-NC 1
    model, _, _ = hand
    (got,) = soft_metrics(model, torch.tensor([1, 3, 4]), [torch.full((3,), float("nan"))],
                          torch.Generator().manual_seed(0))
    assert got.soft_ns == 0.0 and got.soft_nc == pytest.approx(1.0)


def test_soft_ns_is_clipped_and_nc_is_not():
    # invariant: NS = max(0, D0 - DS) / D0 (clipped at 0); NC = DC / D0 may exceed 1
    assert soft_ns_nc_from_distances(d_s=0.5, d_c=0.9, d_0=0.3) == soft_ns_nc_from_distances(0.7, 0.9, 0.3)
    got = soft_ns_nc_from_distances(d_s=0.1, d_c=0.6, d_0=0.4)
    assert got.soft_ns == pytest.approx(0.75) and got.soft_nc == pytest.approx(1.5)


def test_distance_kinds():
    # invariant: current distance = sqrt2 * Hellinger^2; "hellinger" = ||sqrt p - sqrt q|| / sqrt 2
    p, q = torch.tensor([0.2, 0.8], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    sq = float(((p.sqrt() - q.sqrt()) ** 2).sum())
    assert float(distance(p, q)) == pytest.approx(sq / math.sqrt(2))
    h = float(distance(p, q, "hellinger"))
    assert h == pytest.approx(math.sqrt(sq) / math.sqrt(2))
    assert float(distance(p, q)) == pytest.approx(math.sqrt(2) * h * h)


def test_random_scores_are_a_softmax_of_uniforms():
    # invariant: the random baseline is softmax(U(0,1)^L): positive, sums to 1, ratios below e
    w = random_scores(50, torch.Generator().manual_seed(0))
    assert w.sum().item() == pytest.approx(1.0)
    assert (w.max() / w.min()).item() < math.e
