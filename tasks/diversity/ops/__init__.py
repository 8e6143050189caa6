"""Maths of the diversity family, one topic per module (after O'Mahony, Grinsztajn, Schoelkopf, Biderman,
"Attributing Mode Collapse in the Fine-Tuning of Large Language Models", ICLR 2024 ME-FoMo workshop; code
lauraaisling/analyse-llms):

- `next_token`: next-token statistics over documents (entropy, confidence, mean distribution, perplexity);
- `sampling`: seeded ancestral sampling with temperature and top-k / top-p;
- `metrics`: diversity of a set of completions (self-BLEU, NCD, Jaccard, compression, cosine, order-q,
  Vendi, distinct-n);
- `finetune`: fine-tuning on a narrow text (the offline stand-in for SFT).

Quirks of the original are fixed by default; each has a named option that restores it (documented where it
applies). The names below are re-exported so that `from tasks.diversity import ops` reaches every function;
torch is imported inside the functions that need it.
"""

from tasks.diversity.ops.finetune import (
    finetune_on_text,
)
from tasks.diversity.ops.metrics import (
    MetricOptions,
    average_cosine_similarity,
    average_pairwise_jaccard,
    average_pairwise_ncd,
    avg_compression_ratio_full,
    avg_compression_ratio_target,
    cosine_matrix,
    distinct_n,
    diversity_metrics,
    gzip_len,
    jaccard,
    jaccard_matrix,
    limit_num_words,
    mean_pooled_embeddings,
    metric_names,
    ncd,
    ngrams,
    order_q_diversity,
    self_bleu,
    sentence_bleu,
    vendi_score,
)
from tasks.diversity.ops.next_token import (
    NextTokenAggregator,
    NextTokenOptions,
    collate_windows,
    entropy_from_logprobs,
    mass_rank_fraction,
    next_token_statistics,
    perplexity,
    rolling_windows,
    window_stats,
)
from tasks.diversity.ops.sampling import (
    filter_logits,
    sample_continuations,
)

__all__ = [
    "MetricOptions",
    "NextTokenAggregator",
    "NextTokenOptions",
    "average_cosine_similarity",
    "average_pairwise_jaccard",
    "average_pairwise_ncd",
    "avg_compression_ratio_full",
    "avg_compression_ratio_target",
    "collate_windows",
    "cosine_matrix",
    "distinct_n",
    "diversity_metrics",
    "entropy_from_logprobs",
    "filter_logits",
    "finetune_on_text",
    "gzip_len",
    "jaccard",
    "jaccard_matrix",
    "limit_num_words",
    "mass_rank_fraction",
    "mean_pooled_embeddings",
    "metric_names",
    "ncd",
    "next_token_statistics",
    "ngrams",
    "order_q_diversity",
    "perplexity",
    "rolling_windows",
    "sample_continuations",
    "self_bleu",
    "sentence_bleu",
    "vendi_score",
    "window_stats",
]
