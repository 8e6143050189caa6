"""Encoder hidden states for every token of a list of texts, batched and sorted by length.

make_bert_embeddings.py (Bombari and Mondelli 2024, simone-bombari/attention-sensitivity) tokenises with
padding="max_length", truncation, max_length=256 and runs BertModel(output_hidden_states=True) in batches of
20 under no_grad, keeping hidden_states[layer] (layer 0 = the embedding layer's output). Here:
- texts are sorted by token count (longest first, so memory runs out on the first batch if it does) and
  batched; outputs are put back in input order;
- `padding="max_length"` (default) pads every text to max_length as the original, so rows past the text
  ([SEP] then [PAD] positions) are real model outputs, which the sensitivity stage uses when n exceeds a
  text's length; `padding="longest"` pads each batch to its longest text only (faster; rows past a batch's
  longest text are left as zeros and marked by `n_computed`);
- one forward serves every requested layer; torch.inference_mode; right padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass
class Encoded:
    hidden: dict[int, torch.Tensor]  # layer -> (N, T, width)
    input_ids: torch.Tensor  # (N, T) int64
    attention_mask: torch.Tensor  # (N, T) int64
    token_type_ids: torch.Tensor | None  # (N, T) int64, when the tokenizer makes them
    n_computed: torch.Tensor  # (N,) int64: rows holding model outputs
    real_tokens: int  # tokens of the texts ([CLS]/[SEP] included, padding excluded)
    computed_tokens: int  # positions the model ran on (padding included)
    seconds: float  # tokenisation + forward passes + copies


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    """Unpadded encodings with special tokens, truncated to max_length."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}


def hidden_states(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    layers: list[int],
    *,
    max_length: int,
    batch_size: int = 32,
    padding: Literal["max_length", "longest"] = "max_length",
    sort_by_length: bool = True,
    storage_dtype: torch.dtype = torch.float32,
) -> Encoded:
    """hidden_states[layer] of `model` for every token of every text, for each layer in `layers`."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    depth = model.config.num_hidden_layers
    bad = [layer for layer in layers if not 0 <= layer <= depth]
    if bad:
        raise ValueError(f"layer must be in [0, {depth}] (0 = embedding output) for this model, got {bad}")
    enc = tokenize(tokenizer, texts, max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    N, T, width = len(texts), max_length, model.config.hidden_size
    order = sorted(range(N), key=lambda j: -lengths[j]) if sort_by_length else list(range(N))
    pad_value = {"input_ids": tokenizer.pad_token_id, "token_type_ids": 0, "attention_mask": 0}
    if pad_value["input_ids"] is None:
        raise ValueError("the tokenizer has no pad token")

    full = {k: torch.full((N, T), pad_value[k], dtype=torch.long) for k in enc}
    for k, rows in enc.items():
        for j, row in enumerate(rows):
            full[k][j, : len(row)] = torch.tensor(row, dtype=torch.long)
    if "attention_mask" not in full:
        full["attention_mask"] = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    hidden = {layer: torch.zeros((N, T, width), dtype=storage_dtype) for layer in layers}
    n_computed = torch.zeros(N, dtype=torch.long)
    computed = 0
    with torch.inference_mode():
        for first in range(0, N, batch_size):
            idx = torch.tensor(order[first : first + batch_size])
            width_b = T if padding == "max_length" else max(lengths[j] for j in idx.tolist())
            batch = {k: v[idx, :width_b].to(device) for k, v in full.items()}
            out = model(**batch, output_hidden_states=True)
            for layer in layers:
                hidden[layer][idx, :width_b] = out.hidden_states[layer].to("cpu", storage_dtype)
            n_computed[idx] = width_b
            computed += len(idx) * width_b
    return Encoded(
        hidden=hidden, input_ids=full["input_ids"], attention_mask=full["attention_mask"],
        token_type_ids=full.get("token_type_ids"), n_computed=n_computed, real_tokens=sum(lengths),
        computed_tokens=computed, seconds=time.perf_counter() - start,
    )
