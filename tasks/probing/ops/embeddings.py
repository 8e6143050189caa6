"""Edits of the input embedding matrix and noise on the token embeddings; next-token distributions.

- `edited_embeddings`, `swap_rows`, `noise_rows`: in-place edits of rows of the input embedding matrix,
  restored exactly (a saved copy) in `finally`. With tied input/output embeddings (GPT-2, SmolLM2) the
  same rows are the unembedding, so a swap also swaps the two tokens as OUTPUTS; the tasks record
  `tied_embeddings`, and `keep_output=True` gives the output layer an unedited copy for the duration so
  that only the input side changes.
- `input_noise`, `noised_distributions`: Gaussian noise added to the token-embedding output at chosen
  positions (forward hook on the embedding module; position embeddings untouched, as causal tracing
  corrupts, Meng et al. 2022), without any restoration. The same standard-normal draws are reused for
  every scale (common random numbers), so curves over scales differ only by the scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def input_embedding(model: Any) -> torch.nn.Embedding:
    return model.get_input_embeddings()


def embeddings_tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == input_embedding(model).weight.data_ptr()


@contextlib.contextmanager
def edited_embeddings(model: Any, edit: Callable[[torch.Tensor], None], keep_output: bool = False) -> Iterator[None]:
    """Apply `edit(weight)` to the input embedding matrix (V, d) in place; restore the exact tensor after.

    keep_output=True with tied input/output embeddings: the output layer gets an unedited copy of the
    matrix for the duration (its Parameter is put back in `finally`), so only the INPUT side changes.
    keep_output=False edits the shared matrix, so a tied model sees the edit at its output too.
    """
    weight = input_embedding(model).weight
    saved = weight.detach().clone()
    output = model.get_output_embeddings() if keep_output and embeddings_tied(model) else None
    shared = output.weight if output is not None else None
    try:
        if output is not None:
            output.weight = torch.nn.Parameter(saved.clone(), requires_grad=output.weight.requires_grad)
        with torch.no_grad():
            edit(weight)
        yield
    finally:
        if output is not None:
            output.weight = shared
        with torch.no_grad():
            weight.copy_(saved)


def swap_rows(weight: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> None:
    """Swap rows a <-> b of `weight` (V, d) for every pair, simultaneously."""
    if not pairs:
        return
    src = [a for a, _ in pairs] + [b for _, b in pairs]
    dst = [b for _, b in pairs] + [a for a, _ in pairs]
    if len(set(src)) != len(src):
        raise ValueError(f"a token appears in two swap pairs: {pairs}")
    weight[dst] = weight[src].clone()


def noise_rows(weight: torch.Tensor, ids: Sequence[int], std: float, generator: torch.Generator) -> None:
    """Add N(0, std^2) noise to rows `ids` of `weight` (V, d)."""
    if not ids:
        return
    noise = torch.randn((len(ids), weight.shape[1]), generator=generator, device="cpu").to(weight)
    weight[list(ids)] += std * noise


def embedding_std(model: Any) -> float:
    """Standard deviation of all entries of the input embedding matrix: the unit of noise scales."""
    return float(input_embedding(model).weight.detach().float().std())


@torch.no_grad()
def next_token_probs(model: Any, ids: Sequence[int]) -> torch.Tensor:
    """p(next token | ids): (V,) float32 on CPU."""
    x = torch.tensor([list(ids)], device=model_device(model))
    logits = model(input_ids=x, use_cache=False).logits[0, -1].float()
    return logits.softmax(-1).cpu()


def top_k(probs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(id, probability) of the k most probable tokens, best first."""
    values, ids = probs.topk(min(k, probs.shape[-1]))
    return [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]


def rank_of(probs: torch.Tensor, token: int) -> torch.Tensor:
    """0-based rank of `token` in each row of probs (..., V): number of tokens strictly more probable."""
    return (probs > probs[..., token : token + 1]).sum(-1)


@contextlib.contextmanager
def input_noise(model: Any, positions: Sequence[int], noise: torch.Tensor) -> Iterator[None]:
    """Add noise (batch, len(positions), d) to the token-embedding output at `positions` during forwards."""
    index = torch.tensor(list(positions), dtype=torch.long)

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, index.to(out.device)] += noise.to(out)
        return out

    handle = input_embedding(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def noised_distributions(
    model: Any, ids: Sequence[int], positions: Sequence[int], scales: Sequence[float], samples: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """p(next token) with noise scale * z at `positions`, z ~ N(0, I) drawn once and shared by every scale:
    (n_scales, samples, V)."""
    d = input_embedding(model).weight.shape[1]
    z = torch.randn((samples, len(positions), d), generator=generator)
    x = torch.tensor([list(ids)] * samples, device=model_device(model))
    out = []
    for scale in scales:
        with input_noise(model, positions, scale * z):
            logits = model(input_ids=x, use_cache=False).logits[:, -1].float()
        out.append(logits.softmax(-1).cpu())
    return torch.stack(out)
