"""Sense fine-tuning of a Backpack (Hewitt et al. 2024, sense_finetuning.py, importance.py, norm_only_model.py).

Selection (the "alpha" method):
- background B[v, l]: for each general-text chunk (batch size 1), sum the contextualisation weight
  alpha[l, t, j] over all predicting positions t, scatter-add onto (token id x_j, sense l); average over
  chunks;
- per canonical example, A[v, l]: the same sum restricted to the positions t that predict suffix tokens
  (balance: both suffixes added; good-v-bad: correct minus wrong);
- score S = A - lambda B; entries with A <= 0 are not eligible; the top k entries of S are chosen (even
  where S < 0); the union over the examples is the selected set.
- Simplification: when an example has fewer than k entries with A > 0 only those are taken (the
  original takes the top k of the whole matrix, so it fills up with arbitrary A <= 0 entries; with real
  prefixes of several tokens and k <= 11 this does not happen). `max_senses_total` is not implemented.

Training: one trainable additive offset (zero init, width d) per selected (token v, sense l), added to
sense l of every occurrence of v; every other parameter frozen. Then the family's trainer
(finetune.train) runs unchanged: loss, KL regulariser against the unedited Backpack, schedule, leagues.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.editing.ops.losses import encode_example


class SenseOffsets(nn.Module):
    """Trainable offsets for selected (token, sense) pairs: senses[b, l, t] += offset[slot(x_t, l)]."""

    def __init__(self, pairs: Sequence[tuple[int, int]], vocab_size: int, num_senses: int, n_embd: int):
        super().__init__()
        self.pairs = sorted(set((int(v), int(sense)) for v, sense in pairs))
        table = torch.full((vocab_size, num_senses), -1, dtype=torch.long)
        for slot, (v, sense) in enumerate(self.pairs):
            table[v, sense] = slot
        self.register_buffer("table", table, persistent=False)
        self.offsets = nn.Parameter(torch.zeros(len(self.pairs), n_embd))

    def forward(self, input_ids, senses):  # input_ids (b, s), senses (b, k, s, d)
        slot = self.table[input_ids].transpose(1, 2)  # (b, k, s)
        present = (slot >= 0).unsqueeze(-1).to(senses.dtype)
        delta = self.offsets[slot.clamp(min=0)] * present  # (b, k, s, d)
        return senses + delta


@torch.no_grad()
def _position_weights(model, ids: list[int], device) -> torch.Tensor:
    """alpha[l, t, j] of one sequence: (k, s, s)."""
    return model.contextualization(torch.tensor([ids], device=device))[0].float()


@torch.no_grad()
def background_scores(model, chunks: Sequence[Sequence[int]], device) -> torch.Tensor:
    """B[v, l]: mean over chunks of sum_t alpha[l, t, j] scattered onto (x_j, l); (vocab, k)."""
    vocab, k = model.config.vocab_size, model.config.num_senses
    total = torch.zeros(vocab, k, dtype=torch.float64)
    for chunk in chunks:
        alpha = _position_weights(model, list(chunk), device)  # (k, s, s)
        total += _scatter(alpha.sum(1), list(chunk), vocab)
    return total / max(len(chunks), 1)


def _scatter(per_source: torch.Tensor, ids: list[int], vocab: int) -> torch.Tensor:
    """per_source (k, s) onto (vocab, k) by token id of each source position."""
    out = torch.zeros(vocab, per_source.shape[0], dtype=torch.float64)
    out.index_add_(0, torch.tensor(ids), per_source.T.double().cpu())
    return out


@torch.no_grad()
def example_scores(model, tokenizer, example, loss_type: str, max_length: int, device) -> torch.Tensor:
    """A[v, l] of one canonical example (data.Example): alpha summed over suffix-predicting positions."""
    vocab = model.config.vocab_size
    per_suffix = []
    for suffix in example.suffixes:
        ids, n_prefix = encode_example(tokenizer, example.prefix, suffix, max_length)
        alpha = _position_weights(model, ids, device)  # (k, s, s)
        predicting = alpha[:, n_prefix - 1 : len(ids) - 1]  # positions t that predict suffix tokens
        per_suffix.append(_scatter(predicting.sum(1), ids, vocab))
    if loss_type == "balance":
        return per_suffix[0] + per_suffix[1]
    if loss_type == "good-v-bad":
        return per_suffix[0] - per_suffix[1]
    return per_suffix[0]


def select_senses(
    model, tokenizer, examples, loss_type: str, background: torch.Tensor, k: int, lam: float, max_length: int, device
) -> list[tuple[int, int]]:
    """The union over examples of the top-k (token, sense) entries of S = A - lambda B with A > 0."""
    chosen: set[tuple[int, int]] = set()
    for example in examples:
        a = example_scores(model, tokenizer, example, loss_type, max_length, device)
        s = a - lam * background
        s[a <= 0] = -float("inf")
        flat = s.flatten()
        n = min(k, int(torch.isfinite(flat).sum()))
        if n == 0:
            continue
        top = torch.topk(flat, n).indices
        chosen.update((int(i) // s.shape[1], int(i) % s.shape[1]) for i in top)
    return sorted(chosen)


def prepare_sense_model(model, pairs: Sequence[tuple[int, int]]):
    """A deep copy of the Backpack with every parameter frozen and trainable offsets on `pairs`."""
    if not hasattr(model, "sense_vectors"):
        raise ValueError("method senses needs a Backpack model (tasks.editing.ops.backpack)")
    if not pairs:
        raise ValueError("sense selection chose no (token, sense) pair")
    trained = copy.deepcopy(model)
    trained.zero_grad(set_to_none=True)
    trained.eval()
    for p in trained.parameters():
        p.requires_grad_(False)
    cfg = trained.config
    trained.sense_offsets = SenseOffsets(pairs, cfg.vocab_size, cfg.num_senses, cfg.n_embd).to(
        next(model.parameters()).device
    )
    return trained


OFFSETS_FILE = "sense_offsets.safetensors"


def save_offsets(directory, pairs, offsets) -> None:
    """The selected (token, sense) pairs and their offsets at the reported epoch (the original saved them
    for the ensemble whenever an epoch was inside the league; the last such epoch wins, as here)."""
    import torch
    from safetensors.torch import save_file

    save_file({"pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), "offsets": offsets.contiguous()},
              str(Path(directory) / OFFSETS_FILE))


def load_offsets(path) -> tuple[list[tuple[int, int]], Any]:
    """The (token, sense) pairs and offsets written by `save_offsets`."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    return [(int(v), int(sense)) for v, sense in state["pairs"].tolist()], state["offsets"]
