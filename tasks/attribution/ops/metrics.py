"""Soft normalised sufficiency and comprehensiveness (casszhao/ReAGent evaluator/soft_norm_*.py, base_masking.py).

E = word-token embeddings of the prefix (L, d), fed as inputs_embeds (position embeddings still added);
q = the full next-token distribution at the last position on E (the target id is not used).
Soft mask for keep-probabilities pi (L,): M[i, j] ~ Bernoulli(pi_i) iid per position AND embedding
coordinate (U < pi_i); masked input E * M (dropped coordinates set to 0, no rescaling).
D(p, q) = sum_v (sqrt p_v - sqrt q_v)^2 / sqrt 2   (no outer square root: sqrt 2 * Hellinger^2).
p_S: pi = w;  p_C: pi = 1 - w;  p_0: pi = 0 (every token embedding zeroed).
  Soft-NS = max(0, D_0 - D_S) / D_0        Soft-NC = D_C / D_0   (no clipping)
NaN scores (an unconverged ReAGent in the original) give U < NaN = False: all masked, so Soft-NS = 0
and Soft-NC = 1, as in the original.
Random baseline: w = softmax(u), u ~ U(0, 1)^L, one fresh draw per target, for both NS and NC.
All variants of one target go through the model in one batch. `distance="hellinger"` gives the metric
before the original's commit 6184bac1 (true Hellinger ||sqrt p - sqrt q||_2 / sqrt 2), for comparing
with old stored results. Probabilities are computed in float64 (the original evaluated the whole
model in float64; here the model keeps its dtype and only the softmax and distances are float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tasks.common.lm import last_logits, token_embeddings


def distance(p: torch.Tensor, q: torch.Tensor, kind: str = "sq_hellinger_sqrt2") -> torch.Tensor:
    """(..., V), (..., V) -> (...): the soft metrics' distance between two distributions."""
    sq = (p.sqrt() - q.sqrt()).pow(2).sum(-1)
    if kind == "sq_hellinger_sqrt2":
        return sq / math.sqrt(2.0)
    if kind == "hellinger":
        return sq.sqrt() / math.sqrt(2.0)
    raise ValueError(f"distance must be sq_hellinger_sqrt2 or hellinger, got {kind!r}")


def random_scores(length: int, generator: torch.Generator, device: Any = "cpu") -> torch.Tensor:
    """The original's random attribution: softmax of U(0, 1) draws, (L,)."""
    return torch.rand(length, generator=generator, device=device, dtype=torch.float64).softmax(-1)


@dataclass(frozen=True)
class SoftScores:
    soft_ns: float
    soft_nc: float


def soft_ns_nc_from_distances(d_s: float, d_c: float, d_0: float) -> SoftScores:
    return SoftScores(max(0.0, d_0 - d_s) / d_0, d_c / d_0)


@torch.inference_mode()
def soft_metrics(
    model: Any,
    ids: torch.Tensor,  # (L,)
    score_sets: list[torch.Tensor],  # each (L,) importance distribution
    generator: torch.Generator,
    distance_kind: str = "sq_hellinger_sqrt2",
) -> list[SoftScores]:
    """Soft-NS and Soft-NC of each importance vector for one prefix (one batched forward)."""
    embeds = token_embeddings(model, ids[None])[0]  # (L, d)
    L, d = embeds.shape
    keep = [torch.ones(L, dtype=torch.float64, device=embeds.device), torch.zeros(L, dtype=torch.float64,
                                                                                 device=embeds.device)]
    for w in score_sets:
        w = w.to(embeds.device, torch.float64)
        keep += [w, 1.0 - w]
    keep_t = torch.stack(keep)  # (2 + 2M, L): q, p_0, then (p_S, p_C) per score set
    u = torch.rand((len(keep_t), L, d), generator=generator, device=embeds.device, dtype=torch.float64)
    masked = embeds[None] * (u < keep_t[:, :, None]).to(embeds.dtype)  # (2 + 2M, L, d)
    last = torch.full((len(keep_t),), L - 1, device=embeds.device)
    probs = last_logits(model, last, inputs_embeds=masked).double().softmax(-1)  # (2 + 2M, V)
    dist = distance(probs[1:], probs[0][None], distance_kind)
    d_0 = float(dist[0])
    return [soft_ns_nc_from_distances(float(dist[1 + 2 * m]), float(dist[2 + 2 * m]), d_0)
            for m in range(len(score_sets))]
