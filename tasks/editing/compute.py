"""Scoring, losses and verdicts of "Model Editing with Canonical Examples" (Hewitt et al. 2024).

Token alignment (utils.score_suffix in the original): the prefix is tokenized with the tokenizer's
defaults (special tokens as the tokenizer adds them), the suffix separately without special tokens, and
the two id lists are concatenated; the scored positions are those predicting suffix tokens. n(s) is the
suffix NLL summed over its tokens, m(s) = n(s) / len(s) the per-token mean.

- Training losses use m (section 5 of the notes): good = mean m(y); bad = -mean m(y);
  balance = mean |m(y1) - m(y2)|; good-v-bad = mean (m(y_correct) - m(y_wrong)).
- Verdicts use n (evaluate.ScoreEvaluator / PairEvaluator with eval_normalization "example"): an example
  fails iff its statistic exceeds the dataset threshold delta (see `example_success`).
- Degradation texts: per-token mean NLL over every predicted position (the first token of a text is never
  predicted), micro-averaged over all tokens of all texts.

Simplification: the original scores with batch size 1; here examples are right-padded into batches
(identical up to float rounding). Prefixes longer than the model context are cut from the left (the
original's models had contexts long enough); texts longer than `max_length` are split into chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LOSS_TYPES = ("good", "bad", "balance", "good-v-bad")


# --------------------------------------------------------------------------------------------------
# tokenization


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _context_token(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("empty prefix and the tokenizer has neither a BOS nor an EOS token to condition on")


def encode_example(tokenizer, prefix: str, suffix: str, max_length: int) -> tuple[list[int], int]:
    """(prefix ids + suffix ids, number of prefix ids); the prefix is cut from the left to fit."""
    prefix_ids = _ids(tokenizer, prefix, special=True)
    suffix_ids = _ids(tokenizer, suffix, special=False)
    if not suffix_ids:
        raise ValueError(f"suffix {suffix!r} tokenizes to nothing")
    if not prefix_ids:  # nothing to condition the first suffix token on
        prefix_ids = [_context_token(tokenizer)]
    if len(suffix_ids) >= max_length:
        raise ValueError(f"suffix of {len(suffix_ids)} tokens does not fit max_length={max_length}")
    keep = max_length - len(suffix_ids)
    prefix_ids = prefix_ids[-keep:]
    return prefix_ids + suffix_ids, len(prefix_ids)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Each text tokenized with the tokenizer's defaults, split into chunks of at most max_length ids."""
    chunks = []
    for text in texts:
        ids = _ids(tokenizer, text, special=True)
        for start in range(0, len(ids), max_length):
            chunk = ids[start : start + max_length]
            if len(chunk) >= 2:
                chunks.append(chunk)
    return chunks


# --------------------------------------------------------------------------------------------------
# log-likelihoods


def _pad(sequences: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def token_nll(model, sequences: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of every next token: (batch, seq-1) values and a (batch, seq-1) mask of real positions.

    Position t holds -log p(ids[t+1] | ids[:t+1]). Differentiable (call under no_grad to evaluate).
    """
    ids, mask = _pad(sequences, device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (batch, seq-1, vocab)
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (batch, seq-1)
    return nll, mask[:, 1:].to(nll.dtype)


def suffix_nll(model, encoded: Sequence[tuple[list[int], int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed suffix NLL n and suffix length per example: two (batch,) tensors (differentiable)."""
    nll, mask = token_nll(model, [ids for ids, _ in encoded], device)
    positions = torch.arange(nll.shape[1], device=nll.device)[None, :]  # predicts token t+1
    starts = torch.tensor([n_prefix - 1 for _, n_prefix in encoded], device=nll.device)[:, None]
    suffix_mask = mask * (positions >= starts).to(mask.dtype)
    return (nll * suffix_mask).sum(1), suffix_mask.sum(1)


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


@torch.no_grad()
def text_loss(model, chunks: Sequence[Sequence[int]], device, batch_size: int = 8) -> tuple[float, int]:
    """Per-token mean NLL over all predicted positions of all chunks (micro average), and the token count."""
    total, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        nll, mask = token_nll(model, chunks[start : start + batch_size], device)
        total += float((nll * mask).sum())
        count += int(mask.sum())
    if count == 0:
        raise ValueError("no predicted tokens in the degradation text")
    return total / count, count


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
