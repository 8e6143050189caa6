"""Seeded ancestral sampling with temperature and top-k / top-p (creative_and_factual_completions.py of
lauraaisling/analyse-llms, which did not seed its sampling)."""

from __future__ import annotations

from collections.abc import Sequence


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
