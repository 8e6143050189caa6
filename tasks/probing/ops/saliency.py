"""Input saliency of the answer's probability: one score per input token.

Reuses the shared gradient methods (`tasks.common.gradients`: p(target) at the last position from token
embeddings, and the ReAGent baselines norm / input_x_gradient / gradient_shap) and adds the signed
"gradient x embedding summed over the embedding dimension" and integrated gradients against a BOS / EOS /
zero / unk baseline.
"""

from __future__ import annotations

from typing import Any

import torch

from tasks.probing.ops.embeddings import model_device

SALIENCY_METHODS = ("gradient_x_input", "integrated_gradients", "norm", "input_x_gradient", "gradient_shap")
BASELINES = ("bos", "eos", "zero", "unk")


def baseline_embeddings(model: Any, tokenizer: Any, ids: torch.Tensor, baseline: str) -> torch.Tensor:
    """(1, L, d) baseline for integrated gradients: every position the BOS / EOS token's embedding, zeros,
    or inseq's rule ("unk": unk everywhere except eos positions, `tasks.common.gradients.baseline_ids`)."""
    from tasks.common.gradients import baseline_ids
    from tasks.common.lm import token_embeddings

    if baseline == "zero":
        with torch.no_grad():
            return torch.zeros_like(token_embeddings(model, ids[None]))
    if baseline == "unk":
        base = baseline_ids(ids, tokenizer)
        if base is None:
            raise ValueError("baseline 'unk' needs a tokenizer with an unk or eos token")
    else:
        token = tokenizer.bos_token_id if baseline == "bos" else tokenizer.eos_token_id
        if baseline not in ("bos", "eos"):
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got baseline={baseline!r}")
        if token is None:
            raise ValueError(f"baseline {baseline!r}: the tokenizer has no {baseline} token")
        base = torch.full_like(ids, int(token))
    with torch.no_grad():
        return token_embeddings(model, base[None]).detach()


def token_saliency(
    model: Any, tokenizer: Any, ids: torch.Tensor, target: int, method: str, baseline: str | None = None,
    n_steps: int = 50, seed: int = 0,
) -> torch.Tensor:
    """One score per token of `ids` (L,) for p(target | ids) at the last position; (L,) float on CPU.

    - gradient_x_input: sum over d of dp/dE_i * E_i (signed).
    - integrated_gradients: captum IntegratedGradients(multiply_by_inputs=True), Gauss-Legendre, n_steps,
      against `baseline` (bos / eos / zero / unk), summed over d (signed; completeness: the scores add up
      to p(target | E) - p(target | baseline) up to the integration error).
    - norm, input_x_gradient, gradient_shap: the shared ReAGent baselines unchanged (non-negative,
      normalised as the ReAGent evaluation does).
    """
    from tasks.common.gradients import GRADIENT_METHODS, input_embeddings, target_fn

    ids = ids.to(model_device(model))
    if method in ("norm", "input_x_gradient", "gradient_shap"):
        fn = GRADIENT_METHODS[method]
        return fn(model, ids, int(target), tokenizer=tokenizer, seed=seed).detach().float().cpu()
    embeds = input_embeddings(model, ids)  # (1, L, d) leaf
    forward = target_fn(model, int(target), log=False)  # (batch, L, d) -> (batch,) p(target)
    if method == "gradient_x_input":
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(forward(embeds).sum(), embeds)
        return (grad * embeds).detach()[0].sum(-1).float().cpu()
    if method == "integrated_gradients":
        from captum.attr import IntegratedGradients

        base = baseline_embeddings(model, tokenizer, ids, baseline or "zero")
        with torch.enable_grad():
            attr = IntegratedGradients(forward, multiply_by_inputs=True).attribute(
                embeds, baselines=base, n_steps=n_steps, method="gausslegendre"
            )
        return attr.detach()[0].sum(-1).float().cpu()
    raise ValueError(f"method must be one of {', '.join(SALIENCY_METHODS)}, got method={method!r}")
