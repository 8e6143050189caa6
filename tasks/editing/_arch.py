"""Module lookup for the editing family: the shared per-architecture table plus the MLP's projections.

The table lives in `tasks.common.arch` (layers, embedding, mlp, attention). Until that module is merged,
a minimal fallback with the same function names covers GPT-2, Llama and GPT-NeoX so this family can be
built and tested; it is removed once `tasks.common.arch` lands.

`mlp_projections(mlp)` finds the MLP's input and output projections without naming them: the output
("down") projection is the last Linear/Conv1D child of the MLP (GPT-2 c_proj, Llama down_proj, NeoX
dense_4h_to_h, GPT-J fc_out), the others are its input projections.
"""

from __future__ import annotations

from typing import Any

try:  # the shared table, once merged
    from tasks.common.arch import attention, embedding, layers, mlp  # noqa: F401
except ImportError:  # pragma: no cover - fallback until tasks.common.arch exists
    _TABLE: dict[str, dict[str, str]] = {
        # model_type: dotted paths (from the CausalLM wrapper); "{i}" is the layer index
        "gpt2": {"layers": "transformer.h", "embedding": "transformer.wte", "mlp": "mlp", "attention": "attn"},
        "llama": {"layers": "model.layers", "embedding": "model.embed_tokens", "mlp": "mlp", "attention": "self_attn"},
        "gpt_neox": {
            "layers": "gpt_neox.layers",
            "embedding": "gpt_neox.embed_in",
            "mlp": "mlp",
            "attention": "attention",
        },
    }

    def _entry(model: Any) -> dict[str, str]:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in _TABLE:
            raise NotImplementedError(f"no module table for model_type={model_type!r}; known: {sorted(_TABLE)}")
        return _TABLE[model_type]

    def _get(root: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            root = getattr(root, part)
        return root

    def layers(model: Any) -> Any:
        return _get(model, _entry(model)["layers"])

    def embedding(model: Any) -> Any:
        return _get(model, _entry(model)["embedding"])

    def mlp(model: Any, i: int) -> Any:
        return getattr(layers(model)[i], _entry(model)["mlp"])

    def attention(model: Any, i: int) -> Any:
        return getattr(layers(model)[i], _entry(model)["attention"])


def _is_projection(module: Any) -> bool:
    import torch

    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def mlp_projections(mlp_module: Any) -> tuple[list[Any], Any]:
    """(input projections, output projection) of an MLP block, found by registration order."""
    projections = [m for m in mlp_module.children() if _is_projection(m)]
    if len(projections) < 2:
        raise NotImplementedError(f"cannot find the projections of {type(mlp_module).__name__}")
    return projections[:-1], projections[-1]


def down_proj(model: Any, i: int) -> Any:
    """The MLP output projection of layer i: its input is ROME's key k (size D), its output the value."""
    return mlp_projections(mlp(model, i))[1]


def n_layers(model: Any) -> int:
    return len(layers(model))


def max_positions(model: Any, default: int = 1024) -> int:
    config = model.config
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def weight_as_in_out(module: Any):
    """The projection's weight viewed as (in_features, out_features): Conv1D stores it so, Linear transposed."""
    from transformers.pytorch_utils import Conv1D

    return module.weight if isinstance(module, Conv1D) else module.weight.T
