"""Small helpers shared by the attribution ops: last-position logits, embeddings, eager attention."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch


def _accepts_logits_to_keep(model: Any) -> bool:
    cached = getattr(model, "_attr_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        with contextlib.suppress(AttributeError):
            model._attr_logits_to_keep = cached
    return cached


def last_logits(
    model: Any,
    last: torch.Tensor,  # (batch,) index of each row's last real position
    input_ids: torch.Tensor | None = None,  # (batch, seq), right-padded
    inputs_embeds: torch.Tensor | None = None,  # (batch, seq, d), right-padded
) -> torch.Tensor:  # (batch, vocab)
    """Next-token logits at each row's own last position.

    Rows are right-padded: a causal LM's position t never sees positions > t, so padding after the
    last real token changes nothing and no attention mask is needed. Only the kept positions go
    through the LM head (`logits_to_keep`) where the model supports it.
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    if _accepts_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=last[:, None], use_cache=False).logits  # (batch, 1, vocab)
        return logits[:, 0]
    logits = model(**kwargs, use_cache=False).logits  # (batch, seq, vocab)
    return logits[torch.arange(len(last), device=logits.device), last]


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
