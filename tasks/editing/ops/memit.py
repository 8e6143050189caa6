"""MEMIT: a batched edit of many requests spread over several MLP layers (Meng et al. 2023,
arXiv 2210.07229; kmeng01/memit memit_main.py, compute_z.py, compute_ks.py), as the canonical-examples
paper runs it (sarahlc888/memit notebooks/run_memit.py: all canonical examples of a split in ONE call).

Shared with ROME (rome.py): the target optimisation (rome.compute_v, here on the residual stream),
keys at the subject's last token (rome.keys_and_values), the key second moment C (rome.second_moment),
the context templates and the hook / restore machinery.

For requests i = 1..n (prompt with "{}", subject, target[, target_alt]) and layers l_1 < ... < l_m:
1. z_i: the residual stream (block output) of the LAST edited layer at the subject's last token that
   makes the target likely: rome.compute_v with the block as module (NLL + KL + weight decay, clamp,
   early stop as ROME; loss variants for the pair datasets and the fork's behaviours for multi-token
   targets, `fork_anti_prompts`, `fork_length_norm`, `fork_negative_stop`: see compute_v).
2. For each layer l in ascending order, on the model with the previous layers already updated:
   K (D x n) = keys at layer l (subject last token; mean over the context templates, the bare "{}"
   template weighing 1/2 as MEMIT's two template groups); R = z - h_L(current model, bare prompt);
   resid = R / (number of layers left, this one included);
   Delta_l = (lambda C_l + K K^T)^-1 K resid^T in the (key-in, value-out) layout, float64, with
   lambda = mom2_update_weight and C_l = E[k k^T] over general text (uncentred, as ROME).
3. W_l += Delta_l before the next layer's keys are taken.

Simplifications: C from the `general` text given (the original: 100k Wikipedia articles); ROME's sampled
context templates (or fixed ones) instead of MEMIT's 10 samples from 5 fixed openers; the NLL is read
from the full model's logits (MEMIT's logit lens at v_loss_layer = the last layer is the same thing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from tasks.common.tokens import subject_last_index
from tasks.editing.ops import _arch, rome


@dataclass(frozen=True)
class MemitRequest:
    prompt: str  # with "{}" for the subject
    subject: str
    target: str
    target_alt: str | None = None  # balance / good-v-bad


@dataclass(frozen=True)
class MemitHparams:
    layers: tuple[int, ...]
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 0.75
    mom2_update_weight: float = 15000.0
    loss_type: str = "good"
    # the fork's behaviours for multi-token targets and unbounded losses (rome.compute_v); off = the paper's loss
    fork_anti_prompts: bool = False
    fork_length_norm: bool = False
    fork_negative_stop: float | None = None


@dataclass
class MemitResult:
    deltas: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (D, d) key-in, value-out
    z_loss: list[float] = field(default_factory=list)  # last loss of each request's z optimisation
    z: torch.Tensor | None = None  # (n, d) target residual stream at the last edited layer


def _bare_ids(tokenizer, request: MemitRequest) -> tuple[list[int], int]:
    text = request.prompt.format(request.subject)
    return list(tokenizer(text)["input_ids"]), subject_last_index(tokenizer, text, request.subject)


@torch.no_grad()
def block_outputs(model, layer: int, seqs, positions, device) -> torch.Tensor:
    """Residual stream after block `layer` at one position per sequence: (n, d)."""
    store: dict[str, torch.Tensor] = {}
    block = _arch.layers(model)[layer]
    ids, mask = rome._pad_right(seqs, device)
    with rome._hook(block, lambda m, a, out: store.update(h=rome._output_tensor(out).detach())):
        model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(seqs), device=ids.device)
    return store["h"][rows, torch.tensor(list(positions), device=ids.device)].float()


def request_keys(model, tokenizer, layer: int, requests: Sequence[MemitRequest], templates: Sequence[str], device):
    """K: (n, D) keys at `layer`, per request the bare template weighing 1/2 and the others 1/2 together."""
    keys = []
    for req in requests:
        texts = [t.format(req.prompt).format(req.subject) for t in templates]
        seqs = [list(tokenizer(text)["input_ids"]) for text in texts]
        positions = [subject_last_index(tokenizer, text, req.subject) for text in texts]
        k, _ = rome.keys_and_values(model, layer, seqs, positions, device)
        keys.append(k[0] if len(k) == 1 else 0.5 * k[0] + 0.5 * k[1:].mean(0))
    return torch.stack(keys)


def layer_update(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, weight: float) -> torch.Tensor:
    """Delta (D, d) = (weight C + K^T K)^-1 K^T resid for keys (n, D), residuals (n, d), C (D, D); float64.

    The minimiser of ||(W + Delta) K - V||^2 (new keys to their targets) + weight ||Delta k||^2 averaged
    over general-text keys k (C = E[k k^T]): MEMIT's batched least squares."""
    K, R, C = keys.double(), resid.double(), cov.double()
    return torch.linalg.solve(weight * C + K.T @ K, K.T @ R)


def compute_memit(
    model, tokenizer, requests: Sequence[MemitRequest], hp: MemitHparams, templates: Sequence[str],
    covs: dict[int, torch.Tensor], device,
) -> MemitResult:
    """The per-layer deltas of one batched edit; the model is updated while computing and restored after."""
    if not requests:
        raise ValueError("MEMIT needs at least one request")
    layers = sorted(hp.layers)
    last = layers[-1]
    block = _arch.layers(model)[last]
    rh = rome.RomeHparams(layer=last, v_num_grad_steps=hp.v_num_grad_steps, v_lr=hp.v_lr,
                          v_weight_decay=hp.v_weight_decay, kl_factor=hp.kl_factor,
                          clamp_norm_factor=hp.clamp_norm_factor)
    result = MemitResult()
    zs = []
    for req in requests:
        target = req.target if req.target.startswith(" ") else " " + req.target
        alt = None if req.target_alt is None else (
            req.target_alt if req.target_alt.startswith(" ") else " " + req.target_alt)
        z, _, loss, _ = rome.compute_v(model, tokenizer, rh, req.prompt, req.subject, target, templates, device,
                                       module=block, loss_type=hp.loss_type, target_alt=alt,
                                       fork_anti_prompts=hp.fork_anti_prompts, fork_length_norm=hp.fork_length_norm,
                                       fork_negative_stop=hp.fork_negative_stop)
        zs.append(z)
        result.z_loss.append(loss)
    z = result.z = torch.stack(zs)  # (n, d)
    bare = [_bare_ids(tokenizer, r) for r in requests]
    with applied_deltas(model, result.deltas):  # grows as layers are processed; all restored at the end
        for i, layer in enumerate(layers):
            keys = request_keys(model, tokenizer, layer, requests, templates, device)  # (n, D)
            current = block_outputs(model, last, [b[0] for b in bare], [b[1] for b in bare], device)
            resid = (z - current) / (len(layers) - i)
            delta = layer_update(keys, resid, covs[layer], hp.mom2_update_weight)
            result.deltas[layer] = delta
            _add(model, layer, delta)
    return result


def _add(model, layer: int, delta_in_out: torch.Tensor) -> None:
    proj = _arch.down_proj(model, layer)
    weight = proj.weight
    delta = delta_in_out if _arch.weight_as_in_out(proj) is weight else delta_in_out.T
    with torch.no_grad():
        weight.add_(delta.to(weight.dtype))


@contextmanager
def applied_deltas(model, deltas: dict[int, torch.Tensor]) -> Iterator[dict[int, torch.Tensor]]:
    """Adds `deltas` (layer -> (D, d)) to the output projections inside the block (and any added to the
    dict while inside, by the caller); restores the exact original weights of every layer in finally."""
    originals = {i: _arch.down_proj(model, i).weight.detach().clone() for i in range(_arch.n_layers(model))}
    try:
        for layer, delta in list(deltas.items()):
            _add(model, layer, delta)
        yield deltas
    finally:
        with torch.no_grad():
            for i, w in originals.items():
                _arch.down_proj(model, i).weight.copy_(w)
