"""Ensemble of a sense-fine-tuned Backpack with a larger LM (Hewitt et al. 2024, improve_llama_experiment.py,
norm_only_model.LLAMAWithABackpack):

    logits_ens = logits_large[..., :V] + beta (log_softmax(backpack_edited) - log_softmax(backpack_unedited))[..., :V]

The edit's log-probability change is added to the larger model's logits over V = the larger model's
vocabulary, the ids its tokenizer defines (GPT-J: GPT-2's 50257, whose logits are padded to 50400; the
Backpack's are padded to 50264): the original slices both to 50257, so padding ids never enter. Each
Backpack distribution is normalised over its own full width first. Sense offsets never touch the
contextualisation network, so the two Backpack passes share one alpha (computed once, as the original).

beta search (`search_beta`): beta starts at 1.0 and drops by 0.1 until the ensemble's general-text loss
is < (1 + eps) x G_0, the loss of the larger model sliced to V (the ensemble at beta = 0, as the
original's initial score); beta = 0 is the fallback, so the result is always inside the league. Works
with any causal LM that shares the Backpack's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class _Output:
    logits: torch.Tensor


class EnsembleLM(nn.Module):
    """large + beta x (edited Backpack - unedited Backpack) log-probabilities over the first `vocab_size`
    ids; `.logits` (batch, seq, vocab_size) like an HF model."""

    def __init__(self, large, backpack, beta: float, vocab_size: int):
        super().__init__()
        if backpack.sense_offsets is None:
            raise ValueError("the ensemble needs a Backpack with sense offsets (an edited one)")
        if not 0 < vocab_size <= backpack.config.vocab_size:
            raise ValueError(f"vocab_size must be in 1..{backpack.config.vocab_size} (the Backpack's logits), "
                             f"got vocab_size={vocab_size}")
        self.large, self.backpack, self.beta, self.vocab_size = large, backpack, beta, vocab_size

    def backpack_delta(self, input_ids) -> torch.Tensor:
        """log p_edited - log p_unedited: (batch, seq, vocab_backpack), one shared contextualisation."""
        bp = self.backpack
        alpha = bp.contextualization(input_ids)
        edited = bp.logits_from(bp.sense_vectors(input_ids), alpha)
        unedited = bp.logits_from(bp.backpack.sense_network(bp.backpack.word_embeddings(input_ids)), alpha)
        return F.log_softmax(edited.float(), -1) - F.log_softmax(unedited.float(), -1)

    def forward(self, input_ids, attention_mask=None, **_unused) -> _Output:
        large = self.large(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        vocab = self.vocab_size
        if large.shape[-1] < vocab:
            raise ValueError(f"the larger model has {large.shape[-1]} logits, fewer than vocab_size={vocab}")
        if self.beta == 0:
            return _Output(large[..., :vocab])
        return _Output(large[..., :vocab] + self.beta * self.backpack_delta(input_ids)[..., :vocab])


@dataclass
class BetaSearch:
    beta: float
    general_loss: float  # of the ensemble at beta
    general_loss_large: float  # G_0: the larger model alone, sliced to the vocabulary
    tried: list[tuple[float, float]]  # (beta, general loss) in the order tried


def search_beta(large, backpack, general_chunks, league: float, device, *, vocab_size: int, start: float = 1.0,
                step: float = 0.1) -> BetaSearch:
    """The largest beta in start, start - step, ... whose general loss is < G_0 (1 + league); 0 otherwise.

    G_0 = the general loss of the larger model sliced to `vocab_size` (the ensemble at beta = 0)."""
    from tasks.editing.ops.losses import text_loss

    g0, _ = text_loss(EnsembleLM(large, backpack, 0.0, vocab_size), general_chunks, device)
    tried = []
    n_steps = round(start / step)
    for i in range(n_steps):
        beta = round(start - i * step, 10)
        loss, _ = text_loss(EnsembleLM(large, backpack, beta, vocab_size), general_chunks, device)
        tried.append((beta, loss))
        if loss < g0 * (1 + league):
            return BetaSearch(beta, loss, g0, tried)
    return BetaSearch(0.0, g0, g0, tried)
