"""Token alignment and log-likelihoods of a causal LM: suffix NLL, per-token NLL, text loss.

Shared by editing (Hewitt et al. 2024, "Model Editing with Canonical Examples": scoring and training
losses) and probing (fact injection). Token alignment as utils.score_suffix in the original
(john-hewitt/model-editing-canonical-examples): the prefix is tokenized with the tokenizer's defaults
(special tokens as the tokenizer adds them), the suffix separately without special tokens, and the two
id lists are concatenated; the scored positions are those predicting suffix tokens. n(s) is the suffix
NLL summed over its tokens. Examples are right-padded into batches (the original scores one at a time:
identical up to float rounding); prefixes longer than the context are cut from the left, texts longer
than `max_length` are split into chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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
