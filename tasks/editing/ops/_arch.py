"""Module lookup for the editing family: the shared table (`tasks.common.arch`) plus a few helpers."""

from __future__ import annotations

from typing import Any

from tasks.common.arch import attention, embedding, layers, mlp, mlp_out_proj, mlp_projections, num_layers

__all__ = [
    "attention", "down_proj", "embedding", "layers", "max_positions", "mlp", "mlp_projections", "n_layers",
    "weight_as_in_out",
]


def down_proj(model: Any, i: int) -> Any:
    """The MLP output projection of layer i: its input is ROME's key k (size D), its output the value."""
    return mlp_out_proj(model, i)


def n_layers(model: Any) -> int:
    return num_layers(model)


def max_positions(model: Any, default: int = 1024) -> int:
    """The model's context length from its config (n_positions / max_position_embeddings)."""
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def weight_as_in_out(module: Any):
    """The projection's weight viewed as (in_features, out_features): Conv1D stores it so, Linear transposed."""
    from transformers.pytorch_utils import Conv1D

    return module.weight if isinstance(module, Conv1D) else module.weight.T
