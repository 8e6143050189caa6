"""Scoring, losses and verdicts of "Model Editing with Canonical Examples" (Hewitt et al. 2024).

Token alignment and log-likelihoods (utils.score_suffix in the original) are `tasks.common.nll`, shared
with probing: n(s) is the suffix NLL summed over its tokens, m(s) = n(s) / len(s) the per-token mean.

- Training losses use m (as the original's training loop): good = mean m(y); bad = -mean m(y);
  balance = mean |m(y1) - m(y2)|; good-v-bad = mean (m(y_correct) - m(y_wrong)).
- Verdicts use n (evaluate.ScoreEvaluator / PairEvaluator with eval_normalization "example"): an example
  fails iff its statistic exceeds the dataset threshold delta (see `example_success`).
- Degradation texts: per-token mean NLL over every predicted position (the first token of a text is never
  predicted), micro-averaged over all tokens of all texts (`tasks.common.nll.text_loss`).

Simplification: the original scores with batch size 1; here examples are right-padded into batches
(identical up to float rounding).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.nll import encode_example as encode_example
from tasks.common.nll import encode_texts as encode_texts
from tasks.common.nll import suffix_nll as suffix_nll
from tasks.common.nll import text_loss as text_loss
from tasks.common.nll import token_nll as token_nll

LOSS_TYPES = ("good", "bad", "balance", "good-v-bad")


@torch.no_grad()
def score_examples(model, tokenizer, examples, device, max_length: int, batch_size: int = 16) -> np.ndarray:
    """Summed NLL n(s) of every suffix of every example: array (n_examples, n_suffixes)."""
    n_suffixes = len(examples[0].suffixes) if examples else 1
    out = np.zeros((len(examples), n_suffixes))
    for j in range(n_suffixes):
        encoded = [encode_example(tokenizer, ex.prefix, ex.suffixes[j], max_length) for ex in examples]
        for start in range(0, len(encoded), batch_size):
            n, _ = suffix_nll(model, encoded[start : start + batch_size], device)
            out[start : start + batch_size, j] = n.cpu().double().numpy()
    return out


# --------------------------------------------------------------------------------------------------
# losses and verdicts


def canonical_loss(n: torch.Tensor, length: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Training loss of a batch from summed NLL n and lengths, both (batch, n_suffixes)."""
    m = n / length  # per-token mean NLL, (batch, n_suffixes)
    if loss_type == "good":
        return m[:, 0].mean()
    if loss_type == "bad":
        return -m[:, 0].mean()
    if loss_type == "balance":
        return (m[:, 0] - m[:, 1]).abs().mean()
    if loss_type == "good-v-bad":
        return (m[:, 0] - m[:, 1]).mean()
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got loss_type={loss_type!r}")


def example_statistic(n: np.ndarray, loss_type: str) -> np.ndarray:
    """The per-example quantity the verdict thresholds; n is (examples, n_suffixes) of summed NLLs."""
    if loss_type == "good":
        return n[:, 0]  # -log p(y)
    if loss_type == "bad":
        return -n[:, 0]  # log p(stereotyped y)
    if loss_type == "balance":
        return np.abs(n[:, 0] - n[:, 1])  # |log p(he) - log p(she)|
    if loss_type == "good-v-bad":
        return n[:, 0] - n[:, 1]  # log p(wrong) - log p(correct)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got loss_type={loss_type!r}")


def example_success(n: np.ndarray, loss_type: str, threshold: float) -> np.ndarray:
    """Success per example: the original fails an example iff its statistic is > threshold.

    good: p(y) >= exp(-delta) (0.2 country, 0.05 company/temporal); bad: p(y) <= 0.001 (stereoset);
    balance: p(he)/p(she) within 1.5x (gender); good-v-bad: p(correct) >= 16 p(wrong) (verb).
    """
    return example_statistic(n, loss_type) <= threshold


def kl_to_reference(logits_new: torch.Tensor, logits_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_new) summed over real positions and the vocabulary, divided by the batch size.

    As regularize.KLRegularization computes it (paper eq. 4 writes the other direction); logits
    (batch, seq, vocab), mask (batch, seq).
    """
    log_new = F.log_softmax(logits_new.float(), dim=-1)
    log_ref = F.log_softmax(logits_ref.float(), dim=-1)
    kl = (log_ref.exp() * (log_ref - log_new)).sum(-1)  # (batch, seq)
    return (kl * mask).sum() / logits_new.shape[0]


def cosine_factor(epoch: int, epochs: int) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=0) stepped per epoch: lr factor of (0-based) epoch."""
    return (1 + math.cos(math.pi * epoch / epochs)) / 2
