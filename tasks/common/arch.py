"""Which module is the embedding, the layers, the MLP, the attention: one table row per architecture.

Keyed by `model.config.model_type`. Every function takes either the model with its head
(GPT2LMHeadModel, LlamaForCausalLM, ...) or the base model (GPT2Model, LlamaModel, BertModel, ...),
so task code never branches on the model's name:

    for i in range(arch.num_layers(model)):
        with hook(arch.mlp(model, i)): ...

Paths are dotted attribute paths. `embedding`, `layers` and `final_norm` are relative to the base model
(`model.base_model`); `mlp`, `mlp_out_proj` and `attention` to one layer; `lm_head` to the model with
its head. `module_name(model, site, i)` gives the same modules as names in `model.named_modules()`.

Architecture notes:
- gpt2, gptj, gpt_neox, llama (and mistral, qwen2, qwen3, gemma: same layout) are pre-LN: a layer's
  `mlp` / `attention` output is exactly what it adds to the residual stream.
- bert, roberta are post-LN: `attention` (BertAttention) and `mlp` (BertOutput: down-projection,
  dropout, residual add, LayerNorm) return the residual stream after the sublayer, not the sublayer's
  contribution; `mlp_out_proj` (output.dense) gives the MLP's own contribution. There is no final norm,
  and `lm_head` exists only on the masked-LM model (`cls.predictions`: transform + decoder).
- opt has no MLP module (fc1 and fc2 sit directly on the layer): `mlp` raises, `mlp_out_proj` is fc2.
- `mlp_out_proj` is the MLP's output projection, the matrix ROME edits (c_proj in gpt2, down_proj in
  llama, dense_4h_to_h in gpt_neox, fc_out in gptj, fc2 in opt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARCHS",
    "SITES",
    "ArchSpec",
    "UnsupportedArchitectureError",
    "attention",
    "embedding",
    "final_norm",
    "layer",
    "layers",
    "lm_head",
    "mlp",
    "mlp_out_proj",
    "mlp_projections",
    "module_name",
    "num_layers",
    "spec",
]


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths for one architecture; None where the architecture has no such module."""

    embedding: str  # token embedding, relative to the base model
    layers: str  # ModuleList of blocks, relative to the base model
    mlp: str | None  # relative to one layer
    attention: str  # relative to one layer
    mlp_out_proj: str  # MLP output projection (Linear or Conv1D), relative to one layer
    final_norm: str | None  # relative to the base model
    lm_head: str | None  # relative to the model with its head


_LLAMA_LIKE = ArchSpec(
    embedding="embed_tokens",
    layers="layers",
    mlp="mlp",
    attention="self_attn",
    mlp_out_proj="mlp.down_proj",
    final_norm="norm",
    lm_head="lm_head",
)
_BERT_LIKE = ArchSpec(
    embedding="embeddings.word_embeddings",
    layers="encoder.layer",
    mlp="output",
    attention="attention",
    mlp_out_proj="output.dense",
    final_norm=None,
    lm_head=None,  # set per model below
)

ARCHS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        embedding="wte",
        layers="h",
        mlp="mlp",
        attention="attn",
        mlp_out_proj="mlp.c_proj",
        final_norm="ln_f",
        lm_head="lm_head",
    ),
    "gptj": ArchSpec(
        embedding="wte",
        layers="h",
        mlp="mlp",
        attention="attn",
        mlp_out_proj="mlp.fc_out",
        final_norm="ln_f",
        lm_head="lm_head",
    ),
    "gpt_neox": ArchSpec(
        embedding="embed_in",
        layers="layers",
        mlp="mlp",
        attention="attention",
        mlp_out_proj="mlp.dense_4h_to_h",
        final_norm="final_layer_norm",
        lm_head="lm_head",  # `embed_out` before transformers 5
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "opt": ArchSpec(
        embedding="decoder.embed_tokens",
        layers="decoder.layers",
        mlp=None,
        attention="self_attn",
        mlp_out_proj="fc2",
        final_norm="decoder.final_layer_norm",
        lm_head="lm_head",
    ),
    "bert": ArchSpec(**{**_BERT_LIKE.__dict__, "lm_head": "cls.predictions"}),
    "roberta": ArchSpec(**{**_BERT_LIKE.__dict__, "lm_head": "lm_head"}),
}

SITES = ("embedding", "layer", "mlp", "attention", "mlp_out_proj", "final_norm", "lm_head")


class UnsupportedArchitectureError(ValueError):
    """A model whose `config.model_type` has no row in `ARCHS`, or lacks the module asked for."""


def spec(model: Any) -> ArchSpec:
    """The table row for `model`, by `model.config.model_type`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); supported model types: "
            f"{', '.join(sorted(ARCHS))}. Add a row to tasks.common.arch.ARCHS."
        )
    return ARCHS[model_type]


def embedding(model: Any):
    """The token embedding module (nn.Embedding: vocab -> d_model)."""
    return _get(_base(model), spec(model).embedding)


def layers(model: Any):
    """The ModuleList of transformer blocks."""
    return _get(_base(model), spec(model).layers)


def num_layers(model: Any) -> int:
    return len(layers(model))


def layer(model: Any, i: int):
    """Block `i` (negative indices count from the end)."""
    blocks = layers(model)
    if not -len(blocks) <= i < len(blocks):
        raise IndexError(f"layer index {i} out of range for a model with {len(blocks)} layers")
    return blocks[i]


def mlp(model: Any, i: int):
    """The MLP (feed-forward) module of block `i`; see the module docstring for post-LN models."""
    return _get(layer(model, i), _require(model, "mlp"))


def mlp_out_proj(model: Any, i: int):
    """The MLP's output projection in block `i` (d_ff -> d_model; the weight ROME edits)."""
    return _get(layer(model, i), spec(model).mlp_out_proj)


def _is_projection(module: Any) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def mlp_projections(model: Any, i: int) -> list[Any]:
    """Every Linear / Conv1D matrix of layer i's MLP (GPT-2 c_fc and c_proj, Llama gate/up/down_proj)."""
    return [m for m in mlp(model, i).modules() if _is_projection(m)]


def attention(model: Any, i: int):
    """The attention module of block `i`."""
    return _get(layer(model, i), spec(model).attention)


def final_norm(model: Any):
    """The norm applied after the last block, before the LM head."""
    return _get(_base(model), _require(model, "final_norm"))


def lm_head(model: Any):
    """The module mapping final hidden states to vocabulary logits; needs the model with its head."""
    path = _require(model, "lm_head")
    if _base(model) is model:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is a base model without an LM head: load it with its head "
            "(AutoModelForCausalLM / load_causal_lm, or AutoModelForMaskedLM for encoders)"
        )
    return _get(model, path)


def module_name(model: Any, site: str, i: int | None = None) -> str:
    """The name of a site's module in `model.named_modules()` ("transformer.h.3.mlp" for gpt2 mlp 3).

    site: one of SITES; `i` is required for the per-layer sites (layer, mlp, attention, mlp_out_proj).
    """
    row = spec(model)
    base_prefix = "" if _base(model) is model else f"{model.base_model_prefix}."
    if site in ("embedding", "final_norm"):
        return base_prefix + _require(model, site)
    if site == "lm_head":
        lm_head(model)  # raises when there is none
        return _require(model, "lm_head")
    if site not in SITES:
        raise ValueError(f"site must be one of {', '.join(SITES)}, got site={site!r}")
    if i is None:
        raise ValueError(f"site {site!r} is per layer: give a layer index i")
    n = num_layers(model)
    layer(model, i)  # range check
    index = i % n
    prefix = f"{base_prefix}{row.layers}.{index}"
    return prefix if site == "layer" else f"{prefix}.{_require(model, site)}"


def _require(model: Any, field: str) -> str:
    path = getattr(spec(model), field)
    if path is None:
        raise UnsupportedArchitectureError(
            f"architecture {model.config.model_type!r} has no {field} module (see tasks.common.arch)"
        )
    return path


def _base(model: Any):
    """The base model (GPT2Model inside GPT2LMHeadModel); the model itself when it is the base."""
    return getattr(model, "base_model", model)


def _get(root: Any, path: str):
    obj = root
    for part in path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"{type(root).__name__} has no submodule {path!r} (stopped at {part!r}): the table row for "
                f"{getattr(root.config, 'model_type', '?')!r} in tasks.common.arch does not match this model"
            ) from None
    return obj
