"""Attention baselines as the ReAGent original ran them (casszhao/ReAGent importance_score_evaluator/attention.py).

One forward with attentions (eager attention: transformers 5 returns none under SDPA); stack the
layers, mean over heads -> A (layers, L, L). Then the last position's row of
- `attention` ("all"): the mean over layers;
- `attention_last`: the last layer;
- `attention_rollout`: R = A'_N ... A'_1 with A'_l = 0.5 A_l + 0.5 I (later layers on the left);
followed by a SOFTMAX over positions (normalization="original"; a quirk that flattens the scores
towards uniform, kept because it defines the compared baseline). normalization="sum" divides the raw
row by its sum instead. At sequence level the original's "attention" went through inseq 0.4 instead:
last layer, mean over heads, no softmax: `attention_last` with normalization="sum".
"""

from __future__ import annotations

from typing import Any

import torch

from tasks.common.lm import eager_attention


def attention_maps(model: Any, ids: torch.Tensor) -> torch.Tensor:  # (L,) -> (layers, L, L)
    with torch.inference_mode(), eager_attention(model):
        out = model(input_ids=ids[None], output_attentions=True, use_cache=False)
    if not out.attentions:
        raise RuntimeError("the model returned no attentions: load it with attn_implementation='eager'")
    return torch.stack([a[0].double().mean(0) for a in out.attentions])  # mean over heads


def attention_row(maps: torch.Tensor, kind: str) -> torch.Tensor:  # (layers, L, L) -> (L,)
    if kind == "all":
        return maps.mean(0)[-1]
    if kind == "last":
        return maps[-1, -1]
    if kind == "rollout":
        eye = torch.eye(maps.shape[-1], dtype=maps.dtype, device=maps.device)
        residual = 0.5 * maps + 0.5 * eye
        rollout = residual[0]
        for layer in range(1, len(residual)):
            rollout = residual[layer] @ rollout
        return rollout[-1]
    raise ValueError(f"attention kind must be all, last or rollout, got {kind!r}")


def _normalize(row: torch.Tensor, normalization: str) -> torch.Tensor:
    if normalization in ("original", "softmax"):
        return row.softmax(-1).float()
    if normalization == "sum":
        return (row / row.sum()).float()
    raise ValueError(f"normalization must be original, softmax or sum, got {normalization!r}")


def attention(model: Any, ids: torch.Tensor, target: int, normalization: str = "original", **_: Any) -> torch.Tensor:
    """Mean over layers and heads of the last position's attention row, softmaxed."""
    return _normalize(attention_row(attention_maps(model, ids), "all"), normalization)


def attention_last(model: Any, ids: torch.Tensor, target: int, normalization: str = "original", **_: Any):
    """Last layer, mean over heads, last position's row, softmaxed."""
    return _normalize(attention_row(attention_maps(model, ids), "last"), normalization)


def attention_rollout(model: Any, ids: torch.Tensor, target: int, normalization: str = "original", **_: Any):
    """Attention rollout with 0.5 residual mixing, last position's row, softmaxed."""
    return _normalize(attention_row(attention_maps(model, ids), "rollout"), normalization)


# name -> fn(model, ids, target, normalization=...) -> (L,) scores
ATTENTION_METHODS = {"attention": attention, "attention_rollout": attention_rollout, "attention_last": attention_last}
