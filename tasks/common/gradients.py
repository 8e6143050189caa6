"""Gradient attribution methods, as the ReAGent original ran them (casszhao/ReAGent grad.py and inseq.py).

Shared by attribution (the ReAGent baselines) and probing (input saliency). `GRADIENT_METHODS` is the one
table of these methods (name -> fn(model, ids, target, tokenizer=..., normalization=..., seed=...)).

All work on the word-token embeddings E (L, d) fed as `inputs_embeds`, so the model still adds its
position embeddings.
- `norm` (grad.py "norm"): score_i = ||d log p(y | E) / d E_i||_2, then softmax over positions.
- `integrated_gradients`, `gradient_shap`, `input_x_gradient` (inseq 0.4 + captum): attributed function
  p(y | E) (softmax probability, inseq's default); per-token score = L2 norm over the hidden dimension,
  divided by the sum over positions (inseq's aggregation).
  IG: captum IntegratedGradients(multiply_by_inputs=True), n_steps 50, Gauss-Legendre.
  GradientShap: captum GradientShap(multiply_by_inputs=True), n_samples 5, stdevs 0.0 (alpha drawn
  from numpy's global RNG, which we seed and restore around the call). Seed: the original's inseq 0.4
  called transformers.set_seed(42) before every attribution step (feature_attribution.py), so every
  example drew the same 5 alphas; here the seed is the run's seed plus the target's index (same
  distribution, other draws: a simplification).
  Baseline (IG, GradientShap): the embedding of the unk id at every position, except positions holding
  the eos id, which keep it (inseq); with no unk id, the eos id; with neither, zeros.
Simplification: the original re-tokenised the decoded prefix inside inseq (a second model copy), which
shifted OPT positions; here the attributed ids are exactly the prefix ids.
`normalization="softmax"|"sum"|"original"` picks the final normalisation (original = softmax for norm,
sum for the captum methods).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from tasks.common.lm import last_logits, token_embeddings


def target_fn(model: Any, target: int, log: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """embeds (batch, L, d) -> (batch,) p(target) (or log p) at the last position."""
    def forward(embeds: torch.Tensor) -> torch.Tensor:  # (batch, L, d) -> (batch,)
        last = torch.full((embeds.shape[0],), embeds.shape[1] - 1, device=embeds.device)
        logits = last_logits(model, last, inputs_embeds=embeds).float()
        out = logits.log_softmax(-1) if log else logits.softmax(-1)
        return out[:, target]

    return forward


def _normalize(raw: torch.Tensor, how: str) -> torch.Tensor:  # (L,) -> (L,)
    if how == "softmax":
        return raw.softmax(-1)
    if how == "sum":
        return raw / raw.sum()
    raise ValueError(f"normalization must be softmax or sum, got {how!r}")


def baseline_ids(ids: torch.Tensor, tokenizer: Any) -> torch.Tensor | None:
    """inseq's baseline ids: unk everywhere except at eos positions (None when the tokenizer has neither)."""
    base = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    if base is None:
        return None
    out = torch.full_like(ids, base)
    if tokenizer.eos_token_id is not None:
        out = torch.where(ids == tokenizer.eos_token_id, ids, out)
    return out


@contextlib.contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def input_embeddings(model: Any, ids: torch.Tensor) -> torch.Tensor:  # (L,) -> (1, L, d), a leaf that needs grad
    """The word-token embeddings of `ids` as a leaf tensor that requires grad (fed as `inputs_embeds`)."""
    with torch.no_grad():
        embeds = token_embeddings(model, ids[None])
    return embeds.detach().requires_grad_(True)


def norm(model: Any, ids: torch.Tensor, target: int, normalization: str = "original", **_: Any) -> torch.Tensor:
    """L2 norm of the gradient of log p(target) w.r.t. each token embedding; softmax (original)."""
    embeds = input_embeddings(model, ids)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(target_fn(model, target, log=True)(embeds).sum(), embeds)
    raw = grad[0].norm(dim=-1).double()
    return _normalize(raw, "softmax" if normalization == "original" else normalization).float()


def _captum(
    method: str,
    model: Any,
    tokenizer: Any,
    ids: torch.Tensor,
    target: int,
    normalization: str,
    seed: int,
    n_steps: int,
    n_samples: int,
    internal_batch_size: int | None,
) -> torch.Tensor:
    from captum.attr import GradientShap, InputXGradient, IntegratedGradients

    embeds = input_embeddings(model, ids)
    forward = target_fn(model, target, log=False)
    base = baseline_ids(ids, tokenizer)
    with torch.no_grad():
        baseline = token_embeddings(model, base[None]) if base is not None else torch.zeros_like(embeds)
    baseline = baseline.detach()
    with torch.enable_grad():
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward, multiply_by_inputs=True).attribute(
                embeds, baselines=baseline, n_steps=n_steps, method="gausslegendre",
                internal_batch_size=internal_batch_size,
            )
        elif method == "gradient_shap":
            with numpy_seed(seed):
                attr = GradientShap(forward, multiply_by_inputs=True).attribute(
                    embeds, baselines=baseline, n_samples=n_samples, stdevs=0.0
                )
        elif method == "input_x_gradient":
            attr = InputXGradient(forward).attribute(embeds)
        else:
            raise ValueError(method)
    raw = attr[0].detach().norm(dim=-1).double()  # (L,)
    return _normalize(raw, "sum" if normalization == "original" else normalization).float()


def integrated_gradients(model, ids, target, tokenizer, normalization="original", seed=0, n_steps=50,
                         internal_batch_size=None, **_: Any) -> torch.Tensor:
    """captum IntegratedGradients on token embeddings (inseq 0.4 defaults: 50 Gauss-Legendre steps)."""
    return _captum("integrated_gradients", model, tokenizer, ids, target, normalization, seed, n_steps, 0,
                   internal_batch_size)


def gradient_shap(model, ids, target, tokenizer, normalization="original", seed=0, n_samples=5, **_: Any):
    """captum GradientShap on token embeddings (not ids: captum adds noise to its inputs), 5 samples."""
    return _captum("gradient_shap", model, tokenizer, ids, target, normalization, seed, 0, n_samples, None)


def input_x_gradient(model, ids, target, tokenizer, normalization="original", seed=0, **_: Any):
    """captum InputXGradient on token embeddings: gradient of p(target) times the embedding."""
    return _captum("input_x_gradient", model, tokenizer, ids, target, normalization, seed, 0, 0, None)


# The one table of gradient methods: name -> fn(model, ids, target, tokenizer=..., normalization=..., seed=...,
# internal_batch_size=...) -> (L,) scores.
GRADIENT_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "norm": norm,
    "gradient_shap": gradient_shap,
    "integrated_gradients": integrated_gradients,
    "input_x_gradient": input_x_gradient,
}
