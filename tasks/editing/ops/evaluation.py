"""The original's four evaluators on one model, and the rows that compare an edited model with the unedited one.

Per evaluation (evaluate.py in the original; batch size 1 there, padded batches here):
- intervention: summed suffix NLLs of every eval example -> per-example success (compute.example_success);
- hard negatives: summed NLL of each hard negative's true suffix (lower is better; no threshold);
- targeted ("rest_of_prompt") and general: per-token mean NLL over the texts (micro average).

Metrics (aggregate row):
- success: fraction of eval examples that succeed (1 - the original's intervention score).
- degradation_general / degradation_target: RELATIVE loss increase vs the unedited model,
  loss / loss_before - 1, so the original's league eps reads `degradation_general < eps`
  (general_i < G_0 (1 + eps)); absolute losses are in general_loss(_before), targeted_loss(_before).
- hard_negative_nll: the original's hard-negative metric (mean summed NLL of the true suffix);
  hard_negative_delta = its change vs the unedited model.
- success_hard_neg (not in the original; the issue's "success with hard negatives"): success rate over
  the eval examples AND the hard negatives together, where a hard negative succeeds iff the edit
  leaves its true continuation at most `hard_neg_tolerance` nats less likely (default ln 1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.editing.data import EditingData
from tasks.editing.ops.losses import encode_texts, example_statistic, example_success, score_examples, text_loss

DEFAULT_HARD_NEG_TOLERANCE = math.log(1.5)


@dataclass
class EvalSets:
    """What is evaluated after each epoch: examples and pre-tokenized degradation chunks."""

    data: EditingData
    eval: list  # data.Example
    hard_negative: list
    targeted_chunks: list[list[int]]
    general_chunks: list[list[int]]
    max_length: int
    batch_size: int = 16


def build_eval_sets(
    tokenizer,
    data: EditingData,
    general: list[str],
    max_length: int,
    max_eval: int | None = None,
    max_hard_negative: int | None = None,
    batch_size: int = 16,
) -> EvalSets:
    return EvalSets(
        data=data,
        eval=data.eval[:max_eval],
        hard_negative=data.hard_negative[:max_hard_negative],
        targeted_chunks=encode_texts(tokenizer, data.targeted, max_length),
        general_chunks=encode_texts(tokenizer, general, max_length),
        max_length=max_length,
        batch_size=batch_size,
    )


@dataclass
class EvalResult:
    eval_nll: np.ndarray  # (n_eval, n_suffixes) summed NLLs
    success: np.ndarray  # (n_eval,) bool
    hard_negative_nll: np.ndarray  # (n_hard_negative,)
    targeted_loss: float
    general_loss: float
    general_tokens: int


def evaluate(model, tokenizer, sets: EvalSets, device) -> EvalResult:
    data = sets.data
    eval_nll = score_examples(model, tokenizer, sets.eval, device, sets.max_length, sets.batch_size)
    hard = (
        score_examples(model, tokenizer, sets.hard_negative, device, sets.max_length, sets.batch_size)[:, 0]
        if sets.hard_negative
        else np.zeros(0)
    )
    targeted, _ = text_loss(model, sets.targeted_chunks, device) if sets.targeted_chunks else (math.nan, 0)
    general, tokens = text_loss(model, sets.general_chunks, device)
    return EvalResult(
        eval_nll=eval_nll,
        success=example_success(eval_nll, data.loss_type, data.threshold),
        hard_negative_nll=hard,
        targeted_loss=targeted,
        general_loss=general,
        general_tokens=tokens,
    )


def select_league_epoch(general_losses: list[float], league: float, strict: bool = True) -> int:
    """Last epoch i whose general loss is inside the ball G_i < G_0 (1 + eps) (<= when not strict).

    utils.score_of_last_valid_epoch: epoch 0 (no edit) always qualifies, so it is the fallback.
    """
    bound = general_losses[0] * (1 + league)
    chosen = 0
    for i, loss in enumerate(general_losses):
        if loss < bound or (not strict and loss <= bound):
            chosen = i
    return chosen


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def comparison_rows(
    before: EvalResult,
    after: EvalResult,
    loss_type: str,
    hard_neg_tolerance: float = DEFAULT_HARD_NEG_TOLERANCE,
) -> list[dict[str, Any]]:
    """Per-example rows (level "example") and one aggregate row (level "aggregate")."""
    rows: list[dict[str, Any]] = []
    stat_before = example_statistic(before.eval_nll, loss_type)
    stat_after = example_statistic(after.eval_nll, loss_type)
    pair = after.eval_nll.shape[1] > 1
    for i in range(len(after.success)):
        rows.append(
            {
                "level": "example",
                "example_set": "eval",
                "example_index": i,
                "example_nll": float(after.eval_nll[i, 0]),
                "example_nll_before": float(before.eval_nll[i, 0]),
                "example_nll2": float(after.eval_nll[i, 1]) if pair else None,
                "example_nll2_before": float(before.eval_nll[i, 1]) if pair else None,
                "example_statistic": float(stat_after[i]),
                "example_statistic_before": float(stat_before[i]),
                "example_success": bool(after.success[i]),
                "example_success_before": bool(before.success[i]),
            }
        )
    held = after.hard_negative_nll <= before.hard_negative_nll + hard_neg_tolerance
    for i in range(len(after.hard_negative_nll)):
        rows.append(
            {
                "level": "example",
                "example_set": "hard_negative",
                "example_index": i,
                "example_nll": float(after.hard_negative_nll[i]),
                "example_nll_before": float(before.hard_negative_nll[i]),
                "example_nll2": None,
                "example_nll2_before": None,
                "example_statistic": float(after.hard_negative_nll[i] - before.hard_negative_nll[i]),
                "example_statistic_before": 0.0,
                "example_success": bool(held[i]),
                "example_success_before": True,
            }
        )
    n_eval, n_hard = len(after.success), len(held)
    success = _mean(after.success)
    success_before = _mean(before.success)
    combined = np.concatenate([after.success, held]).astype(float)
    combined_before = np.concatenate([before.success, np.ones(n_hard, bool)]).astype(float)
    hn, hn_before = _mean(after.hard_negative_nll), _mean(before.hard_negative_nll)
    rows.append(
        {
            "level": "aggregate",
            "success": success,
            "success_before": success_before,
            "success_gain": None if success is None or success_before is None else success - success_before,
            "success_hard_neg": _mean(combined),
            "success_hard_neg_before": _mean(combined_before),
            "hard_negative_nll": hn,
            "hard_negative_nll_before": hn_before,
            "hard_negative_delta": None if hn is None or hn_before is None else hn - hn_before,
            "general_loss": after.general_loss,
            "general_loss_before": before.general_loss,
            "degradation_general": after.general_loss / before.general_loss - 1,
            "targeted_loss": after.targeted_loss,
            "targeted_loss_before": before.targeted_loss,
            "degradation_target": after.targeted_loss / before.targeted_loss - 1,
            "general_tokens": after.general_tokens,
            "n_eval": n_eval,
            "n_hard_negative": n_hard,
        }
    )
    return rows


def league_rows(before, evaluations: list, leagues: list[float]) -> list[dict[str, Any]]:
    """One row per degradation bound eps (level "league"): the metrics at the last epoch inside
    G < G_0 (1 + eps), read off the same run, as the original's results file records every league.
    Columns are prefixed `league_` so that the aggregate row's metrics (what tune selects on) are not
    averaged with them."""
    losses = [r.general_loss for r in evaluations]
    out = []
    for eps in leagues:
        epoch = select_league_epoch(losses, eps)
        at = evaluations[epoch]
        out.append({
            "level": "league", "league_bound": eps, "league_epoch": epoch,
            "league_success": float(at.success.mean()) if len(at.success) else None,
            "league_success_before": float(before.success.mean()) if len(before.success) else None,
            "league_hard_negative_nll": float(at.hard_negative_nll.mean()) if len(at.hard_negative_nll) else None,
            "league_degradation_general": at.general_loss / before.general_loss - 1,
        })
    return out
