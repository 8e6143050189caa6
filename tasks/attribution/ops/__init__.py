"""Attribution methods (tensors in, tensors out) and the soft faithfulness metrics.

`attribute(method, model, tokenizer, prefixes, targets, ...)` dispatches to ReAGent (batched over
targets) or to a per-target baseline; each returns one score per prefix token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

METHODS = (
    "reagent",
    "norm",
    "gradient_shap",
    "integrated_gradients",
    "input_x_gradient",
    "attention",
    "attention_rollout",
    "attention_last",
)  # = ("reagent", *GRADIENT_METHODS, *ATTENTION_METHODS): tests/unit/attribution/test_methods.py


@dataclass
class Attribution:
    scores: torch.Tensor  # (L,) one score per prefix token
    n_steps: int | None = None  # ReAGent only
    converged: bool | None = None
    rationale: list[int] | None = None


def _baseline_fn(method: str):
    """The baseline `method`: from the shared table of gradient methods or this family's attention table."""
    from tasks.attribution.ops.attention import ATTENTION_METHODS
    from tasks.common.gradients import GRADIENT_METHODS

    return {**GRADIENT_METHODS, **ATTENTION_METHODS}[method]


def attribute(
    method: str,
    model: Any,
    tokenizer: Any,
    prefixes: list[torch.Tensor],
    targets: list[int],
    *,
    reagent_config: Any = None,
    sampler: Any = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    normalization: str = "original",
    internal_batch_size: int | None = None,
) -> list[Attribution]:
    """One `Attribution` per (prefix, target)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got method={method!r}")
    if method == "reagent":
        from tasks.attribution.ops.reagent import ReagentConfig, reagent

        cfg = reagent_config or ReagentConfig()
        results = reagent(model, prefixes, targets, sampler, cfg, generator)
        return [Attribution(r.scores, r.n_steps, r.n_converged > 0, r.rationale) for r in results]
    fn = _baseline_fn(method)
    return [
        Attribution(fn(model, ids, int(y), tokenizer=tokenizer, normalization=normalization, seed=seed + i,
                       internal_batch_size=internal_batch_size).cpu())
        for i, (ids, y) in enumerate(zip(prefixes, targets, strict=True))
    ]
