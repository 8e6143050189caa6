"""Diversity of a set of completions (creative_and_factual_metrics.py of lauraaisling/analyse-llms, metrics
from CarperAI/diversity_metrics and the Vendi score): self-BLEU, NCD, Jaccard, compression ratios, cosine
similarity, Leinster-Cobbold order-q diversity, Vendi score; plus distinct-n, which the original does not
compute. Nothing heavy is imported (torch only inside `mean_pooled_embeddings`)."""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np


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
    """Leinster-Cobbold similarity-sensitive diversity of order q, estimated by sampling (as the original).

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

    Not computed by the original; added because the project asks for it. NaN with no n-gram.
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
