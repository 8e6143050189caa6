"""Small helpers shared by the attribution ops: last-position logits, embeddings, eager attention."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values, each (batch, kv_heads, seq, head_dim)


def _forward_parameters(model: Any) -> frozenset[str]:
    cached = getattr(model, "_attr_forward_parameters", None)
    if cached is None:
        cached = frozenset(inspect.signature(model.forward).parameters)
        with contextlib.suppress(AttributeError):
            model._attr_forward_parameters = cached
    return cached


def _cache_keyword(model: Any) -> str:
    """The forward's name for a KV cache: `cache` from transformers 5.x on, `past_key_values` before."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _as_cache(past: KV) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(past):
        cache.update(keys, values, layer)
    return cache


def _forward_at_last(model: Any, last: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """(logits at each row's `last` position (batch, vocab), the model's output)."""
    if "logits_to_keep" in _forward_parameters(model):
        out = model(**kwargs, logits_to_keep=last[:, None])
        return out.logits[:, 0], out
    out = model(**kwargs)
    return out.logits[torch.arange(len(last), device=out.logits.device), last], out


def last_logits(
    model: Any,
    last: torch.Tensor,  # (batch,) index of each row's last real position (within the given inputs)
    input_ids: torch.Tensor | None = None,  # (batch, seq), right-padded
    inputs_embeds: torch.Tensor | None = None,  # (batch, seq, d), right-padded
    past: KV | None = None,  # keys and values of the positions before the inputs, as many in every row
) -> torch.Tensor:  # (batch, vocab)
    """Next-token logits at each row's own last position.

    Rows are right-padded: a causal LM's position t never sees positions > t, so padding after the
    last real token changes nothing and no attention mask is needed. Only the kept positions go
    through the LM head (`logits_to_keep`) where the model supports it. With `past`, the inputs
    continue a prefix whose keys and values were computed before (their positions follow it).
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    if past is not None:
        kwargs[_cache_keyword(model)] = _as_cache(past)
    return _forward_at_last(model, last, **kwargs, use_cache=False)[0]


def last_logits_and_kv(
    model: Any,
    last: torch.Tensor,  # (batch,)
    input_ids: torch.Tensor,  # (batch, seq), right-padded
) -> tuple[torch.Tensor, KV]:  # (batch, vocab), every layer's keys and values of all seq positions
    """`last_logits` plus the keys and values of every position, for continuing rows from a prefix."""
    logits, out = _forward_at_last(model, last, input_ids=input_ids, use_cache=True)
    return logits, [(layer[0], layer[1]) for layer in getattr(out, _cache_keyword(model))]


def token_embeddings(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Word-token embeddings of `ids` (no position embeddings: the model adds those on inputs_embeds)."""
    return model.get_input_embeddings()(ids)


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Switch a model to eager attention (the only one that returns attention weights), then restore it.

    transformers 5 returns no attentions under SDPA. Models loaded with attn_implementation="eager"
    pass through unchanged.
    """
    current = getattr(model.config, "_attn_implementation", None)
    if current in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def right_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into (batch, max_len) and their lengths (batch,).

    Each row is right-padded with its own last token: never read by a causal LM at the kept
    positions, and never the pad token (which makes some models warn about a missing attention mask).
    """
    lengths = torch.tensor([len(s) for s in seqs], device=seqs[0].device)
    out = torch.empty((len(seqs), int(lengths.max())), dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        out[i, len(s) :] = s[-1]
    return out, lengths
