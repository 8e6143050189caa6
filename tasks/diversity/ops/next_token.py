"""Next-token statistics over documents (compute_data.py, pythia_funcs.py, calc_perplexity.py,
save_results.py of lauraaisling/analyse-llms): rolling windows, per-token log-probability, entropy of the
next-token distribution, top-1 probability (confidence), the average next-token distribution and the share
of the vocabulary holding 70% / 90% of its mass; perplexity. Quirks of the original are fixed by default;
each has a named option of `NextTokenOptions` that restores it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def rolling_windows(
    ids: Sequence[int], prefix_id: int, max_length: int, context_len: int = 1
) -> Iterator[tuple[list[int], int]]:
    """Split a document into model windows that predict every token exactly once (lm-eval style).

    Yields (tokens, n_pred): the model reads tokens[:-1] (at most `max_length` tokens) and the last
    `n_pred` of the targets tokens[1:] are scored. The first window is [prefix] + ids[:n], predicting
    all its n = min(max_length, L) tokens; each later window ends at the next unpredicted block of at
    most max_length - context_len + 1 tokens and is left-filled with up to max_length of the preceding
    tokens. The original uses context_len = 1 and max_length = 1024 (compute_data.py).
    """
    if not 1 <= context_len <= max_length:
        raise ValueError(f"need 1 <= context_len <= max_length, got context_len={context_len}, max_length={max_length}")
    ids = list(ids)
    if not ids:
        return
    pred_len = max_length - context_len + 1
    first = min(max_length, len(ids))
    yield [prefix_id, *ids[:first]], first
    done = first
    while done < len(ids):
        width = min(len(ids) - done, pred_len)
        end = done + width
        yield ids[max(0, end - max_length - 1) : end], width
        done = end


def collate_windows(windows: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-pad windows into a batch.

    Returns input_ids (B, T), attention_mask (B, T), targets (B, T), predicted (B, T) bool: the
    positions whose next token is scored, and valid (B, T) bool: every real (non-pad) position.
    """
    import torch

    width = max(len(tokens) - 1 for tokens, _ in windows)
    batch = len(windows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    targets = torch.zeros((batch, width), dtype=torch.long)
    valid = torch.zeros((batch, width), dtype=torch.bool)
    predicted = torch.zeros((batch, width), dtype=torch.bool)
    for b, (tokens, n_pred) in enumerate(windows):
        n = len(tokens) - 1
        input_ids[b, :n] = torch.as_tensor(tokens[:-1])
        targets[b, :n] = torch.as_tensor(tokens[1:])
        valid[b, :n] = True
        predicted[b, n - n_pred : n] = True
    return input_ids, valid.long(), targets, predicted, valid


def entropy_from_logprobs(logp, zero_eps: float | None = None):
    """Entropy in nats of each distribution along the last axis: (..., V) -> (...).

    zero_eps=None: exact, 0 * log 0 = 0. zero_eps=1e-7: the original (compute_data.py) replaces
    probabilities that are exactly zero (float32 underflow) by 1e-7 before -sum q ln q, which adds
    about 1.6e-6 nats per underflowed entry.
    """
    import torch

    p = logp.exp()
    if zero_eps is None:
        return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    q = torch.where(p == 0, torch.full_like(p, zero_eps), p)
    return -(q * q.log()).sum(-1)


def window_stats(logits, targets, predicted, stat_mask, zero_eps: float | None = None) -> dict[str, Any]:
    """Per-window sums of the next-token statistics.

    logits (B, T, V); targets (B, T); predicted (B, T) bool: scored positions (log-probabilities,
    accuracy); stat_mask (B, T) bool: positions over which entropy, confidence and the mean distribution
    are taken. Returns float64 CPU tensors: nll, n_pred, n_correct, prob (sum of p(target)) of shape (B,);
    entropy, confidence, n_stat of shape (B,); dist_sum (B, V) = sum of p_t over stat positions.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    probs = logp.exp()
    entropy = entropy_from_logprobs(logp, zero_eps)  # (B, T)
    confidence, argmax = probs.max(dim=-1)  # (B, T)
    pred, stat = predicted.to(logits.device), stat_mask.to(logits.device)
    zero = torch.zeros((), device=logits.device)

    def masked_sum(x, mask):  # (B, T) -> (B,), NaN-safe at masked positions
        return torch.where(mask, x, zero).sum(-1).double().cpu()

    dist_sum = torch.where(stat.unsqueeze(-1), probs, zero).sum(1)  # (B, V)
    return {
        "nll": -masked_sum(token_logp, pred),
        "prob": masked_sum(token_logp.exp(), pred),
        "n_correct": masked_sum((argmax == targets.to(logits.device)).float(), pred),
        "n_pred": pred.sum(-1).double().cpu(),
        "entropy": masked_sum(entropy, stat),
        "confidence": masked_sum(confidence, stat),
        "n_stat": stat.sum(-1).double().cpu(),
        "dist_sum": dist_sum.double().cpu(),
    }


@dataclass
class NextTokenOptions:
    """How next-token statistics are taken and aggregated. Defaults fix the original's quirks.

    stats_positions: "predicted" (default) takes entropy, confidence and the mean distribution over the
      positions whose next token is scored; "all" (original) over every input position, so the
      final partial window of a long document re-counts positions already counted.
    zero_eps: None (default) exact entropy; 1e-7 the original's zero replacement.
    entropy_aggregate: "tokens" (default) mean entropy over all counted positions of all documents;
      "first_document" (original, as its probs_*.txt "Entropy") the mean over the first non-empty document only.
    mean_probs_weighting: "window" (original, kept as default) averages the per-window mean distributions
      with equal weight per window; "token" weights every counted position equally.
    mean_probs_flush_every: None (default) keeps every document in the average distribution; 500
      (original) adds pending windows only after documents whose index is a multiple of 500,
      dropping the documents after the last multiple.
    Documents without tokens get a row (NaN statistics) but are otherwise skipped, as the original
    skips them: they are never the "first document" and never flush (their index check is skipped).
    thresholds: tau values for the share of the vocabulary holding tau of the average mass.
    """

    stats_positions: str = "predicted"
    zero_eps: float | None = None
    entropy_aggregate: str = "tokens"
    mean_probs_weighting: str = "window"
    mean_probs_flush_every: int | None = None
    thresholds: tuple[float, ...] = (0.7, 0.9)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("stats_positions", ("predicted", "all")),
            ("entropy_aggregate", ("tokens", "first_document")),
            ("mean_probs_weighting", ("window", "token")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {name}={getattr(self, name)!r}")


@dataclass
class _Doc:
    index: int
    n_tokens: int
    n_bytes: int
    n_windows: int = 0
    windows_done: int = 0
    sums: Counter = field(default_factory=Counter)


def mass_rank_fraction(mean_probs: np.ndarray, tau: float) -> float:
    """(first 0-based rank j at which the sorted cumulative mass exceeds tau) / V (save_results.py)."""
    cumulative = np.cumsum(np.sort(np.asarray(mean_probs, dtype=np.float64))[::-1])
    j = int(np.searchsorted(cumulative, tau, side="right"))
    return min(j, len(cumulative) - 1) / len(cumulative)


def perplexity(nll_sum: float, n_tokens: float) -> float:
    """exp(total negative log-likelihood / number of predicted tokens)."""
    return math.exp(nll_sum / n_tokens) if n_tokens else float("nan")


class NextTokenAggregator:
    """Accumulates window statistics into per-document rows and one model-level summary."""

    def __init__(self, options: NextTokenOptions) -> None:
        self.options = options
        self.docs: dict[int, _Doc] = {}
        self.doc_rows: list[dict[str, Any]] = []
        self.totals: Counter = Counter()
        self.first_doc_entropy: float | None = None
        self.committed_sum: np.ndarray | None = None  # sum of window means (or of position distributions)
        self.committed_n = 0.0
        self.pending_sum: np.ndarray | None = None
        self.pending_n = 0.0

    def start_document(self, index: int, n_tokens: int, n_bytes: int, n_windows: int) -> list[dict[str, Any]]:
        self.docs[index] = _Doc(index, n_tokens, n_bytes, n_windows)
        return self._finish(index) if n_windows == 0 else []

    def add_window(self, index: int, stats: dict[str, Any], b: int) -> list[dict[str, Any]]:
        """Add row `b` of a `window_stats` batch to document `index`; returns the document row when complete."""
        doc = self.docs[index]
        for key in ("nll", "prob", "n_correct", "n_pred", "entropy", "confidence", "n_stat"):
            doc.sums[key] += float(stats[key][b])  # type: ignore[assignment]  # typeshed: Counter values are int
        dist = stats["dist_sum"][b].numpy()
        n_stat = float(stats["n_stat"][b])
        if self.options.mean_probs_weighting == "window":
            contribution, weight = dist / max(n_stat, 1.0), 1.0
        else:
            contribution, weight = dist, n_stat
        self.pending_sum = contribution.copy() if self.pending_sum is None else self.pending_sum + contribution
        self.pending_n += weight
        doc.windows_done += 1
        return self._finish(index) if doc.windows_done == doc.n_windows else []

    def _finish(self, index: int) -> list[dict[str, Any]]:
        doc = self.docs.pop(index)
        s = doc.sums
        n_pred, n_stat = s["n_pred"], s["n_stat"]
        nan = float("nan")
        row: dict[str, Any] = {
            "level": "document",
            "doc_index": doc.index,
            "n_tokens": doc.n_tokens,
            "n_bytes": doc.n_bytes,
            "n_windows": doc.n_windows,
            "mean_logprob": -s["nll"] / n_pred if n_pred else nan,
            "perplexity": perplexity(s["nll"], n_pred),
            "entropy": s["entropy"] / n_stat if n_stat else nan,
            "confidence": s["confidence"] / n_stat if n_stat else nan,
            "top1_accuracy": s["n_correct"] / n_pred if n_pred else nan,
            "mean_token_prob": s["prob"] / n_pred if n_pred else nan,
        }
        self.totals.update(s)
        self.totals["n_bytes"] += doc.n_bytes
        self.totals["n_docs"] += 1
        if n_stat:
            self.totals["doc_confidence_sum"] += row["confidence"]
            self.totals["n_docs_scored"] += 1
        self.doc_rows.append(row)
        if doc.n_windows == 0:  # the original skips documents without tokens, its first-document pick and flush too
            return [row]
        if self.first_doc_entropy is None:
            self.first_doc_entropy = row["entropy"]
        flush = self.options.mean_probs_flush_every
        if flush is None or doc.index % flush == 0:
            if self.pending_sum is not None:
                self.committed_sum = (
                    self.pending_sum if self.committed_sum is None else self.committed_sum + self.pending_sum
                )
                self.committed_n += self.pending_n
            self.pending_sum, self.pending_n = None, 0.0
        return [row]

    def mean_probs(self) -> np.ndarray | None:
        """The average next-token distribution pbar (V,), or None when no window was committed."""
        if self.committed_sum is None or self.committed_n == 0:
            return None
        return self.committed_sum / self.committed_n

    def summary(self) -> dict[str, Any]:
        t = self.totals
        nan = float("nan")
        n_pred, n_stat = t["n_pred"], t["n_stat"]
        if self.options.entropy_aggregate == "first_document":
            entropy = self.first_doc_entropy if self.first_doc_entropy is not None else nan
        else:
            entropy = t["entropy"] / n_stat if n_stat else nan
        pbar = self.mean_probs()
        row = {
            "level": "model",
            "doc_index": -1,
            "n_docs": int(t["n_docs"]),
            "n_tokens": int(n_pred),
            "n_bytes": int(t["n_bytes"]),
            "mean_logprob": -t["nll"] / n_pred if n_pred else nan,
            "perplexity": perplexity(t["nll"], n_pred),
            "bits_per_byte": t["nll"] / math.log(2) / t["n_bytes"] if t["n_bytes"] else nan,
            "entropy": entropy,
            "confidence": t["doc_confidence_sum"] / t["n_docs_scored"] if t["n_docs_scored"] else nan,
            "confidence_token_mean": t["confidence"] / n_stat if n_stat else nan,
            "top1_accuracy": t["n_correct"] / n_pred if n_pred else nan,
            "mean_token_prob": t["prob"] / n_pred if n_pred else nan,
            "vocab_size": len(pbar) if pbar is not None else 0,
            "mean_probs_windows": float(self.committed_n),
        }
        for tau in self.options.thresholds:
            row[f"vocab_share_{round(tau * 100)}"] = mass_rank_fraction(pbar, tau) if pbar is not None else nan
        return row


def next_token_statistics(
    model,
    documents: Iterable[tuple[list[int], int]],
    prefix_id: int,
    pad_id: int,
    max_length: int,
    batch_size: int = 4,
    context_len: int = 1,
    options: NextTokenOptions | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], np.ndarray | None]:
    """Stream documents through `model` in batches of windows; return (document rows, model row, pbar).

    documents: (token ids, UTF-8 byte length) per document, in order. Windows of consecutive documents
    share batches (right-padded, pads masked); the original ran one window per forward pass, which gives
    the same numbers up to float rounding.
    """
    import torch

    options = options or NextTokenOptions()
    agg = NextTokenAggregator(options)
    device = next(model.parameters()).device
    pending: list[tuple[int, list[int], int]] = []  # (doc index, tokens, n_pred)

    def run_batch() -> None:
        windows = [(tokens, n_pred) for _, tokens, n_pred in pending]
        input_ids, attention_mask, targets, predicted, valid = collate_windows(windows, pad_id)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        stat_mask = predicted if options.stats_positions == "predicted" else valid
        stats = window_stats(logits, targets.to(device), predicted, stat_mask, options.zero_eps)
        for b, (index, _, _) in enumerate(pending):
            agg.add_window(index, stats, b)
        pending.clear()

    for index, (ids, n_bytes) in enumerate(documents):
        windows = list(rolling_windows(ids, prefix_id, max_length, context_len))
        agg.start_document(index, len(ids), n_bytes, len(windows))
        for tokens, n_pred in windows:
            pending.append((index, tokens, n_pred))
            if len(pending) == batch_size:
                run_batch()
    if pending:
        run_batch()
    return agg.doc_rows, agg.summary(), agg.mean_probs()
