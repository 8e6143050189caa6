"""Maths of the probing family, one topic per module (tensors in, tensors out; no params models):

- `tokens`: tokenisation variants (" dog" vs "dog" in byte-level BPE), prompt ids, token pieces;
- `embeddings`: in-place edits of the input embedding matrix (restored exactly), input noise, next-token
  distributions;
- `saliency`: per-token saliency of the answer's probability;
- `injection`: step-by-step fact injection with per-layer norms.

The names below are re-exported so that `from tasks.probing import ops` reaches every function.
"""

from tasks.probing.ops.embeddings import (
    edited_embeddings,
    embedding_std,
    embeddings_tied,
    input_embedding,
    input_noise,
    model_device,
    next_token_probs,
    noise_rows,
    noised_distributions,
    rank_of,
    swap_rows,
    top_k,
)
from tasks.probing.ops.injection import (
    answer_loss,
    answer_probability,
    answers,
    greedy_continuation,
    injection_run,
    layer_groups,
    sentence_loss,
)
from tasks.probing.ops.saliency import BASELINES, SALIENCY_METHODS, baseline_embeddings, token_saliency
from tasks.probing.ops.tokens import VARIANTS, encode, prompt_ids, single_token_id, token_pieces, variant_text

__all__ = [
    "BASELINES", "SALIENCY_METHODS", "VARIANTS", "answer_loss", "answer_probability", "answers", "baseline_embeddings",
    "edited_embeddings", "embedding_std", "embeddings_tied", "encode", "greedy_continuation", "injection_run",
    "input_embedding", "input_noise", "layer_groups", "model_device", "next_token_probs", "noise_rows",
    "noised_distributions", "prompt_ids", "rank_of", "sentence_loss", "single_token_id", "swap_rows", "token_pieces",
    "token_saliency", "top_k", "variant_text",
]
