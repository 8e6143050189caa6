"""Maths of the diversity family: next-token statistics, seeded sampling, output-diversity metrics.

After O'Mahony, Grinsztajn, Schoelkopf, Biderman, "Attributing Mode Collapse in the Fine-Tuning of Large
Language Models" (ICLR 2024 ME-FoMo workshop; code lauraaisling/analyse-llms, metrics from
CarperAI/diversity_metrics and the Vendi score). Section references ("notes 2") point at the E section
of the project's research notes, which describe the original line by line.

1. Next-token statistics over documents (notes 2): rolling windows, per-token log-probability, entropy
   of the next-token distribution, top-1 probability (confidence), the average next-token
   distribution and the share of the vocabulary holding 70% / 90% of its mass; perplexity.
2. Seeded ancestral sampling with temperature and top-k / top-p (notes 3).
3. Diversity of a set of completions (notes 4): self-BLEU, NCD, Jaccard, compression ratios, cosine
   similarity, Leinster-Cobbold order-q diversity, Vendi score; plus distinct-n, which the original
   does not compute.
4. Fine-tuning on a narrow text: how the offline "fine-tuned" tiny models are made.

Quirks of the original are fixed by default; each has a named option that restores it (documented
where it applies). Torch is imported inside the functions that need it, so the text metrics import
nothing heavy.
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

# ===================================================================================================
# 1. Next-token statistics


def rolling_windows(
    ids: Sequence[int], prefix_id: int, max_length: int, context_len: int = 1
) -> Iterator[tuple[list[int], int]]:
    """Split a document into model windows that predict every token exactly once (lm-eval style).

    Yields (tokens, n_pred): the model reads tokens[:-1] (at most `max_length` tokens) and the last
    `n_pred` of the targets tokens[1:] are scored. The first window is [prefix] + ids[:n], predicting
    all its n = min(max_length, L) tokens; each later window ends at the next unpredicted block of at
    most max_length - context_len + 1 tokens and is left-filled with up to max_length of the preceding
    tokens. The original uses context_len = 1 and max_length = 1024 (notes 2, step 2).
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

    zero_eps=None: exact, 0 * log 0 = 0. zero_eps=1e-7: the original (notes 2, step 3) replaces
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
      positions whose next token is scored; "all" (original, notes 5.3) over every input position, so the
      final partial window of a long document re-counts positions already counted.
    zero_eps: None (default) exact entropy; 1e-7 the original's zero replacement.
    entropy_aggregate: "tokens" (default) mean entropy over all counted positions of all documents;
      "first_document" (original, notes 5.1) the mean over the first non-empty document only.
    mean_probs_weighting: "window" (original, kept as default) averages the per-window mean distributions
      with equal weight per window; "token" weights every counted position equally.
    mean_probs_flush_every: None (default) keeps every document in the average distribution; 500
      (original, notes 5.2) adds pending windows only after documents whose index is a multiple of 500,
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
    """(first 0-based rank j at which the sorted cumulative mass exceeds tau) / V (notes 2, save_results)."""
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


# ===================================================================================================
# 2. Sampling


def filter_logits(logits, temperature: float, top_k: int | None = None, top_p: float | None = None):
    """Temperature, then top-k, then top-p (nucleus), as transformers' logits warpers: (B, V) -> (B, V)."""
    import torch

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got temperature={temperature}")
    scores = logits.float() / temperature
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def sample_continuations(
    model,
    prompt_ids: Sequence[int],
    n: int,
    temperature: float,
    max_new_tokens: int,
    generator,
    top_k: int | None = 50,
    top_p: float | None = None,
    eos_id: int | None = None,
) -> list[list[int]]:
    """`n` sampled continuations of one prompt (new tokens only, cut before the first eos).

    Ancestral sampling with a KV cache; every draw comes from `generator` (a torch.Generator on the
    model's device), so a fixed seed gives the same continuations. The original called
    `generate(do_sample=True, temperature=T)` without a seed, with transformers' default top_k = 50.
    """
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor([list(prompt_ids)] * n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    new_tokens = []
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True)
        for step in range(max_new_tokens):
            scores = filter_logits(out.logits[:, -1, :], temperature, top_k, top_p)
            next_ids = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)  # (n,)
            if eos_id is not None:
                next_ids = torch.where(finished, torch.full_like(next_ids, eos_id), next_ids)
                finished |= next_ids == eos_id
            new_tokens.append(next_ids)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            out = model(input_ids=next_ids.unsqueeze(1), past_key_values=out.past_key_values, use_cache=True)
    if not new_tokens:
        return [[] for _ in range(n)]
    rows = torch.stack(new_tokens, dim=1).tolist()  # (n, steps)
    if eos_id is not None:
        rows = [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
    return rows


# ===================================================================================================
# 3. Output-diversity metrics of a set of texts (notes 4)


def limit_num_words(text: str, max_num_words: int) -> str:
    """The first `max_num_words` whitespace-separated words, joined by single spaces."""
    return " ".join(text.split()[:max_num_words])


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def sentence_bleu(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str], max_n: int = 4, epsilon: float = 0.1
) -> float:
    """Sentence BLEU with uniform weights and smoothing method 1, as NLTK's `sentence_bleu`.

    Clipped n-gram precisions p_n = clipped matches / max(1, hypothesis n-grams); a zero numerator
    becomes epsilon / denominator (SmoothingFunction().method1); 0 when no unigram matches; brevity
    penalty against the closest reference length (ties: the shorter).
    """
    hyp_len = len(hypothesis)
    log_sum = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        max_ref: Counter = Counter()
        for ref in references:
            for gram, count in Counter(ngrams(ref, n)).items():
                if gram in counts and count > max_ref[gram]:
                    max_ref[gram] = count
        numerator = sum(min(count, max_ref[gram]) for gram, count in counts.items())
        denominator = max(1, sum(counts.values()))
        if n == 1 and numerator == 0:
            return 0.0
        p_n = numerator / denominator if numerator else epsilon / denominator
        log_sum += math.log(p_n) / max_n
    closest = min((len(ref) for ref in references), key=lambda r: (abs(r - hyp_len), r))
    if hyp_len > closest:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - closest / hyp_len)
    return bp * math.exp(log_sum)


def self_bleu(texts: Sequence[str]) -> float:
    """Mean over i of BLEU(text_i; the other texts), case-sensitive whitespace tokens. Higher = less diverse."""
    tokens = [t.split() for t in texts]
    scores = [sentence_bleu(tokens[:i] + tokens[i + 1 :], hyp) for i, hyp in enumerate(tokens)]
    return sum(scores) / len(scores)


def gzip_len(text: str) -> int:
    """Byte length of gzip.compress (level 9) of the UTF-8 text."""
    return len(gzip.compress(text.encode("utf-8")))


def ncd(x: str, y: str) -> float:
    """Normalised compression distance (G(x + " " + y) - min(G(x), G(y))) / max(G(x), G(y))."""
    gx, gy = gzip_len(x), gzip_len(y)
    return (gzip_len(f"{x} {y}") - min(gx, gy)) / max(gx, gy)


def average_pairwise_ncd(texts: Sequence[str]) -> float:
    """Mean over i of the mean NCD(text_i, text_j), j != i (both orders: NCD is not symmetric).
    Higher = more diverse."""
    per_text = [np.mean([ncd(x, y) for j, y in enumerate(texts) if j != i]) for i, x in enumerate(texts)]
    return float(np.mean(per_text))


def jaccard(x: str, y: str, n: int = 2) -> float:
    """|A_n(x) & A_n(y)| / |A_n(x) | A_n(y)| over sets of lower-cased word n-grams; 0 when both are empty."""
    a, b = set(ngrams(x.lower().split(), n)), set(ngrams(y.lower().split(), n))
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def average_pairwise_jaccard(texts: Sequence[str], n: int = 2) -> float:
    """Mean Jaccard n-gram similarity over unordered pairs. Higher = less diverse."""
    return float(np.mean([jaccard(x, y, n) for x, y in combinations(texts, 2)]))


def _ratio(text: str) -> float:
    return gzip_len(text) / len(text.encode("utf-8"))


def avg_compression_ratio_full(texts: Sequence[str]) -> float:
    """Mean over i of rho(join(others)) - rho(join(others + [text_i])), rho = gzip bytes / bytes."""
    diffs = []
    for i, target in enumerate(texts):
        others = list(texts[:i]) + list(texts[i + 1 :])
        diffs.append(_ratio(" ".join(others)) - _ratio(" ".join([*others, target])))
    return float(np.mean(diffs))


def avg_compression_ratio_target(texts: Sequence[str], empty_target: str = "skip") -> float:
    """Mean over i of rho(text_i) - rho(join(others + [text_i])).

    empty_target: "skip" (default) leaves empty texts out of the mean (rho of an empty text is
    undefined); "nan" (original) makes the whole value NaN when any text is empty.
    """
    diffs = []
    for i, target in enumerate(texts):
        if not target:
            if empty_target == "nan":
                return float("nan")
            continue
        others = list(texts[:i]) + list(texts[i + 1 :])
        diffs.append(_ratio(target) - _ratio(" ".join([*others, target])))
    return float(np.mean(diffs)) if diffs else float("nan")


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities of the rows of `embeddings` (n, d) -> (n, n)."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = e / np.where(norms == 0, 1.0, norms)
    return unit @ unit.T


def average_cosine_similarity(sims: np.ndarray, denominator: str = "pairs") -> float:
    """Mean of the strictly lower triangle of a similarity matrix. Higher = less diverse.

    denominator: "pairs" (default) n(n-1)/2; "nonzero" (original) the count of non-zero entries, which
    differs only when a cosine is exactly 0.
    """
    lower = np.tril(sims, k=-1)
    if denominator == "nonzero":
        count = np.count_nonzero(lower)
    else:
        n = sims.shape[0]
        count = n * (n - 1) // 2
    return float(lower.sum() / count) if count else float("nan")


def order_q_diversity(sims: np.ndarray, q: int, num_samples: int, rng: np.random.Generator) -> float:
    """Leinster-Cobbold similarity-sensitive diversity of order q, estimated by sampling (notes 4).

    Repeat num_samples times: draw q items with replacement, group similarity = prod_{j>=2} S[z_1, z_j];
    D_q = mean^(1 / (1 - q)). NaN when there are not more than q items or the mean is 0 (the original
    raised there and stored NaN). The original drew with numpy's unseeded global RNG; here `rng`.
    Higher = more diverse.
    """
    n = sims.shape[0]
    if q < 2 or n <= q:
        return float("nan")
    draws = rng.integers(0, n, size=(num_samples, q))
    group = np.prod(sims[draws[:, :1], draws[:, 1:]], axis=1)
    mu = float(group.mean())
    return mu ** (1.0 / (1.0 - q)) if mu > 0 else float("nan")


def vendi_score(sims: np.ndarray) -> float:
    """Vendi score exp(-sum lambda ln lambda) of the eigenvalues of K / n (order 1, K as given). In [1, n]."""
    n = sims.shape[0]
    eig = np.linalg.eigvalsh(np.asarray(sims, dtype=np.float64) / n)
    eig = eig[eig > 0]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def jaccard_matrix(texts: Sequence[str], n: int = 2, self_similarity: str = "one") -> np.ndarray:
    """K_ij = Jaccard n-gram similarity of texts i and j.

    self_similarity: "one" (default) puts 1 on the diagonal, so K is a similarity kernel for every text;
    "jaccard" (original) computes the diagonal too, which is 0 for a text with fewer than n words.
    """
    m = len(texts)
    k = np.zeros((m, m))
    for i, j in combinations(range(m), 2):
        k[i, j] = k[j, i] = jaccard(texts[i], texts[j], n)
    for i in range(m):
        k[i, i] = 1.0 if self_similarity == "one" else jaccard(texts[i], texts[i], n)
    return k


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whole set (Li et al. 2016), whitespace tokens, case kept.

    Not computed by the original (notes 4); added because the project asks for it. NaN with no n-gram.
    """
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@dataclass(frozen=True)
class MetricOptions:
    """Which metrics to compute and which original quirks to keep (see each metric's docstring)."""

    jaccard_n: tuple[int, ...] = (2, 3, 4)
    order_q: tuple[int, ...] = (2, 3, 4, 5, 6)
    order_q_samples: int = 50
    distinct_n: tuple[int, ...] = (1, 2, 3)
    cosine_denominator: str = "pairs"  # original: "nonzero"
    empty_target: str = "skip"  # original: "nan"
    jaccard_self_similarity: str = "one"  # original: "jaccard"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("cosine_denominator", ("pairs", "nonzero")),
            ("empty_target", ("skip", "nan")),
            ("jaccard_self_similarity", ("one", "jaccard")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {name}={getattr(self, name)!r}")


def metric_names(options: MetricOptions | None = None) -> list[str]:
    """The columns `diversity_metrics` returns, in order (cosine ones too: NaN without embeddings)."""
    options = options or MetricOptions()
    names = ["selfBleuSmoothed", "average_pairwise_ncd"]
    names += [f"average_pairwise_jaccard_{n}" for n in options.jaccard_n]
    names += ["avg_compression_ratio_full", "avg_compression_ratio_target", "cosine_similarity"]
    names += [f"order_{q}_{sim}" for q in options.order_q for sim in ("jaccard_2", "cosine")]
    names += ["vendi_jaccard_2", "vendi_cosine"]
    names += [f"distinct_{n}" for n in options.distinct_n]
    return names


def diversity_metrics(
    texts: Sequence[str],
    embeddings: np.ndarray | None = None,
    options: MetricOptions | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """All diversity metrics of one set of (already word-capped) texts, named as in the original.

    embeddings (n, d): sentence embeddings for the cosine-based metrics (NaN when None). The original
    embedded each pair again inside order-q and Vendi; here each text is embedded once, which gives the
    same cosines up to float rounding. Each order-q estimate draws from its own generator seeded by
    (seed, metric name). A metric that fails on this set is NaN, as in the original.
    """
    options = options or MetricOptions()
    texts = list(texts)
    sims: dict[str, np.ndarray] = {"jaccard_2": jaccard_matrix(texts, 2, options.jaccard_self_similarity)}
    if embeddings is not None:
        sims["cosine"] = cosine_matrix(embeddings)
    metrics: dict[str, Callable[[], float]] = {
        "selfBleuSmoothed": lambda: self_bleu(texts),
        "average_pairwise_ncd": lambda: average_pairwise_ncd(texts),
    }
    for n in options.jaccard_n:
        metrics[f"average_pairwise_jaccard_{n}"] = functools.partial(average_pairwise_jaccard, texts, n)
    metrics["avg_compression_ratio_full"] = lambda: avg_compression_ratio_full(texts)
    metrics["avg_compression_ratio_target"] = lambda: avg_compression_ratio_target(texts, options.empty_target)
    metrics["cosine_similarity"] = lambda: average_cosine_similarity(sims["cosine"], options.cosine_denominator)
    for q in options.order_q:
        for sim in ("jaccard_2", "cosine"):
            name = f"order_{q}_{sim}"
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])

            def order_q(q: int = q, sim: str = sim, rng: np.random.Generator = rng) -> float:
                return order_q_diversity(sims[sim], q, options.order_q_samples, rng)

            metrics[name] = order_q
    metrics["vendi_jaccard_2"] = lambda: vendi_score(sims["jaccard_2"])
    metrics["vendi_cosine"] = lambda: vendi_score(sims["cosine"])
    for n in options.distinct_n:
        metrics[f"distinct_{n}"] = functools.partial(distinct_n, texts, n)
    out = {}
    for name, fn in metrics.items():
        needs_embeddings = "cosine" in name
        if needs_embeddings and "cosine" not in sims:
            out[name] = float("nan")
            continue
        try:
            out[name] = float(fn())
        except (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError):
            out[name] = float("nan")
    return out


def mean_pooled_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Mask-aware mean of the encoder's last hidden states (the sentence-transformers MiniLM pooling): (n, d)."""
    import torch

    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state  # (b, T, d)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float().cpu().numpy())
    return np.concatenate(chunks, axis=0)


# ===================================================================================================
# 4. Fine-tuning on a text (the offline stand-in for SFT)


def finetune_on_text(
    model,
    tokenizer,
    text: str,
    steps: int,
    lr: float = 3e-3,
    seed: int = 0,
    block_size: int = 32,
    batch_size: int = 8,
) -> list[float]:
    """Train all weights of `model` (in place) on random windows of `text` with next-token loss; returns losses.

    AdamW, constant learning rate, `block_size`-token windows drawn from `text` (repeated until long
    enough) by a generator seeded with `seed`; dropout also draws from a seeded, scoped RNG. Leaves the
    model in eval mode. This is a stand-in for the original's SFT / DPO, which are outside the project.
    """
    import torch

    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("text tokenises to nothing")
    while len(ids) < block_size + 1:
        ids = ids + ids
    data = torch.tensor(ids, dtype=torch.long)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        try:
            for _ in range(steps):
                starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
                x = torch.stack([data[s : s + block_size] for s in starts.tolist()]).to(device)
                loss = model(input_ids=x, labels=x).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        finally:
            model.eval()
    return losses
