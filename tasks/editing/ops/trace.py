"""Causal tracing (Meng et al. 2022, kmeng01/rome experiments/causal_trace.py), one generic function.

Per fact: corrupt the subject's token embeddings with Gaussian noise, then restore one site's clean
output at one token and measure the probability of the clean answer.
- Corruption: at the output of the token-embedding module (before position embeddings are added, as
  the original hooks `wte`), add nu * eps to every subject token, eps iid N(0, 1), for `samples` rows.
  The noise is drawn once per fact from a generator seeded with `noise_seed` (1 in the original), so
  the baseline and every restoration see the same draws (common random numbers).
- nu: "s3" rule by default, 3 x the std over all elements of the token embeddings of the subjects,
  every subject-token occurrence counted (`embedding_noise_scale`); a float gives a fixed nu.
- Sites (one function, `site` argument): "hidden" = a block's output (residual stream after block l),
  "mlp" = the MLP output, "attn" = the attention output (first element of its tuple). With `window` w,
  restoring at centre layer l restores layers max(0, l - w//2) .. min(L, l - w//2 + w) - 1 (the code's
  l-5..l+4 for w = 10; the paper's text says l-4..l+5). The original uses w = 1 for hidden states and
  w = 10 for MLP and attention.
- p_clean (high_score) = p(answer) on the clean prompt; p_corrupted (low_score) = mean over noisy rows
  without restoration; restored grid r[t, l] = mean over noisy rows with the site restored at (t, l).
Simplification: the clean run is a separate forward (the original puts it in row 0 of the same batch).
Speed (`reuse_prefix`, on by default for models that take a key/value cache): restoring token t leaves
positions before t as in the corrupted run, so their keys and values are computed once per t and the
restorations at t (every layer) run positions t.. only, batched into few forwards; equal to the
original's one full forward per restoration to float rounding (`reuse_prefix=False`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tasks.common import lm
from tasks.editing.ops import _arch

SITES = ("hidden", "mlp", "attn")


def site_module(model, site: str, layer: int):
    """The module whose output is restored for `site` at `layer`."""
    if site == "hidden":
        return _arch.layers(model)[layer]
    if site == "mlp":
        return _arch.mlp(model, layer)
    if site == "attn":
        return _arch.attention(model, layer)
    raise ValueError(f"site must be one of {SITES}, got site={site!r}")


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """Layers restored for centre `layer`: max(0, l - w//2) .. min(L, l - w//2 + w) - 1."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    start = layer - window // 2
    return list(range(max(0, start), min(n_layers, start + window)))


@torch.no_grad()
def embedding_noise_scale(model, tokenizer, subjects: Sequence[str], factor: float = 3.0) -> float:
    """nu = factor x std over all elements of the token embeddings of every subject string ("s3").

    Every occurrence counts: a token shared by several subjects (or repeated in one) enters once per
    occurrence, as the original's collect_embedding_std concatenates the embeddings subject by subject.
    """
    ids = [i for s in subjects for i in tokenizer(s, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError("no subject tokens to estimate the embedding scale from")
    weight = _arch.embedding(model).weight[torch.tensor(ids, device=_arch.embedding(model).weight.device)]
    return factor * float(weight.float().std())


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def _hooks(pairs) -> Iterator[None]:
    """Register (module, forward-hook) pairs; all removed in finally."""
    with ExitStack() as stack:
        for module, fn in pairs:
            handle = module.register_forward_hook(fn)
            stack.callback(handle.remove)
        yield


@dataclass
class TraceInput:
    input_ids: torch.Tensor  # (1, seq)
    subject_range: tuple[int, int]  # token indices [start, end)
    answer_id: int


@torch.no_grad()
def clean_run(model, inp: TraceInput, site: str) -> tuple[float, dict[int, torch.Tensor], torch.Tensor]:
    """(p(answer), {layer: clean site output (seq, d)}, last-position probabilities (vocab,))."""
    outputs: dict[int, torch.Tensor] = {}
    pairs = []
    def keep(layer: int):
        def hook(module, args, output):
            outputs[layer] = _first(output)[0].detach().clone()

        return hook

    for layer in range(_arch.n_layers(model)):
        pairs.append((site_module(model, site, layer), keep(layer)))
    with _hooks(pairs):
        probs = model(input_ids=inp.input_ids).logits[0, -1].float().softmax(-1)
    return float(probs[inp.answer_id]), outputs, probs


def make_noise(samples: int, n_tokens: int, d: int, scale: float, seed: int, device) -> torch.Tensor:
    """(samples, n_tokens, d) Gaussian noise of std `scale`, from a generator seeded with `seed`."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(samples, n_tokens, d, generator=generator) * scale).to(device)


def _corrupter(noise: torch.Tensor, subject_range: tuple[int, int], offset: int):
    """A forward hook on the token embeddings of prompt positions offset.. (rows of `noise`): adds the
    subject tokens' noise (rows, n_subject_tokens, d) to those of them in the forward."""
    start, end = subject_range

    def corrupt(module, args, output):  # (rows, positions, d)
        output = output.clone()
        first, last = max(start, offset), min(end, offset + output.shape[1])
        if first < last:
            output[:, first - offset:last - offset] += noise[:, first - start:last - start].to(output.dtype)
        return output

    return corrupt


@torch.no_grad()
def patched_probability(
    model,
    inp: TraceInput,
    noise: torch.Tensor,
    site: str,
    restore: Sequence[tuple[int, int]],
    clean: dict[int, torch.Tensor],
) -> float:
    """Mean p(answer) over the noisy rows with the clean `site` output restored at each (token, layer).

    noise: (samples, n_subject_tokens, d) added to the subject's token embeddings. `restore` empty gives
    the corrupted baseline.
    """
    samples = noise.shape[0]
    batch = inp.input_ids.repeat(samples, 1)
    by_layer: dict[int, list[int]] = {}
    for token, layer in restore:
        by_layer.setdefault(layer, []).append(token)

    def restorer(layer):
        tokens = by_layer[layer]

        def hook(module, args, output):
            hidden = _first(output).clone()
            hidden[:, tokens] = clean[layer][tokens].to(hidden.dtype)
            return _replace_first(output, hidden)

        return hook

    pairs = [(_arch.embedding(model), _corrupter(noise, inp.subject_range, 0))]
    pairs += [(site_module(model, site, layer), restorer(layer)) for layer in by_layer]
    with _hooks(pairs):
        probs = model(input_ids=batch).logits[:, -1].float().softmax(-1)  # (samples, vocab)
    return float(probs[:, inp.answer_id].mean())


ROWS_PER_FORWARD = 4096  # token positions in one batched forward of restorations (rows x positions)


@torch.no_grad()
def restored_probabilities(model, inp: TraceInput, noise: torch.Tensor, site: str,
                           restores: Sequence[Sequence[tuple[int, int]]], clean: dict[int, torch.Tensor],
                           offset: int, past: lm.KV | None) -> list[float]:
    """`patched_probability` of each restore set, all in one forward of positions offset.. of the prompt.

    Rows are (restore set, noise sample); `past` holds the keys and values of the corrupted run on
    positions ..offset (`corrupted_prefix`), which no restoration at offset or later changes."""
    samples, groups = noise.shape[0], len(restores)
    batch = inp.input_ids[:, offset:].repeat(samples * groups, 1)
    by_layer: dict[int, dict[int, list[int]]] = {}  # layer -> restore set -> tokens
    for g, restore in enumerate(restores):
        for token, layer in restore:
            by_layer.setdefault(layer, {}).setdefault(g, []).append(token)

    def restorer(layer):
        plan = by_layer[layer]

        def hook(module, args, output):
            hidden = _first(output).clone()
            for g, tokens in plan.items():
                hidden[g * samples:(g + 1) * samples, [t - offset for t in tokens]] = (
                    clean[layer][tokens].to(hidden.dtype))
            return _replace_first(output, hidden)

        return hook

    pairs = [(_arch.embedding(model), _corrupter(noise.repeat(groups, 1, 1), inp.subject_range, offset))]
    pairs += [(site_module(model, site, layer), restorer(layer)) for layer in by_layer]
    tiled_past = None if past is None else [(k.repeat(groups, 1, 1, 1), v.repeat(groups, 1, 1, 1)) for k, v in past]
    last = torch.full((samples * groups,), batch.shape[1] - 1, device=batch.device)
    with _hooks(pairs):
        logits = lm.last_logits(model, last, input_ids=batch, past=tiled_past)
    probs = logits.float().softmax(-1)[:, inp.answer_id].view(groups, samples)
    return [float(p.mean()) for p in probs]


def takes_cache(model) -> bool:
    """Whether the model's forward takes a key / value cache (transformers' causal LMs do)."""
    return bool({"cache", "past_key_values"} & lm._forward_parameters(model))


@torch.no_grad()
def corrupted_prefix(model, inp: TraceInput, noise: torch.Tensor, length: int) -> lm.KV:
    """Every layer's keys and values of the corrupted run on the prompt's first `length` positions."""
    samples = noise.shape[0]
    with _hooks([(_arch.embedding(model), _corrupter(noise, inp.subject_range, 0))]):
        _, past = lm.last_logits_and_kv(model, torch.full((samples,), length - 1, device=inp.input_ids.device),
                                        inp.input_ids[:, :length].repeat(samples, 1))
    return past


@torch.no_grad()
def trace_grid(
    model,
    inp: TraceInput,
    site: str,
    noise: torch.Tensor,
    window: int = 1,
    tokens: Sequence[int] | None = None,
    reuse_prefix: bool = True,
) -> tuple[torch.Tensor, float, float]:
    """Restored probabilities r (seq, L) for every (token, centre layer), plus (p_clean, p_corrupted).

    reuse_prefix (for models that take a cache): positions before the restored token come from one
    corrupted forward per token instead of being recomputed for every layer, and the restorations of
    one token share batched forwards (`restored_probabilities`)."""
    n_layers = _arch.n_layers(model)
    p_clean, clean, _ = clean_run(model, inp, site)
    p_corrupted = patched_probability(model, inp, noise, site, [], clean)
    seq = inp.input_ids.shape[1]
    reuse = reuse_prefix and takes_cache(model)
    grid = torch.full((seq, n_layers), float("nan"))
    for t in tokens if tokens is not None else range(seq):
        restores = [[(t, near) for near in window_layers(layer, window, n_layers)] for layer in range(n_layers)]
        if not reuse:
            for layer, restore in enumerate(restores):
                grid[t, layer] = patched_probability(model, inp, noise, site, restore, clean)
            continue
        past = corrupted_prefix(model, inp, noise, t) if t > 0 else None
        per_forward = max(1, ROWS_PER_FORWARD // (noise.shape[0] * (seq - t)))
        for first in range(0, n_layers, per_forward):
            chunk = restores[first:first + per_forward]
            grid[t, first:first + len(chunk)] = torch.tensor(
                restored_probabilities(model, inp, noise, site, chunk, clean, t, past))
    return grid, p_clean, p_corrupted


def fact_rows(
    model, tokenizer, i: int, prompt: str, subject: str, target: str, scale: float, d: int, *,
    sites: Sequence[str], window: int, samples: int, noise_seed: int, answer: str, only_correct: bool,
    reuse_prefix: bool = True,
) -> list[dict[str, Any]]:
    """Trace fact `i` (prompt with "{}" for the subject, expected target): the rows of level "cell" (when
    traced: the clean prediction matches the target, or not only_correct), then its row of level "fact"."""
    from tasks.common.tokens import subject_token_range

    device = next(model.parameters()).device
    text = prompt.format(subject)
    ids = tokenizer(text)["input_ids"]
    start, end = subject_token_range(tokenizer, text, subject)
    expected = tokenizer(" " + target.lstrip(), add_special_tokens=False)["input_ids"][0]
    input_ids = torch.tensor([ids], device=device)
    with torch.no_grad():
        predicted = int(model(input_ids=input_ids).logits[0, -1].argmax())
    correct = predicted == expected
    answer_id = predicted if answer == "predicted" else expected
    traced = correct or not only_correct
    fact_row = {
        "level": "fact", "fact_index": i, "subject": subject, "prompt_text": text,
        "answer_token": tokenizer.decode([answer_id]), "correct_prediction": correct, "traced": traced,
        "noise_level": scale, "subject_start": start, "subject_end": end, "n_tokens": len(ids),
    }
    if not traced:
        return [fact_row]
    inp = TraceInput(input_ids, (start, end), answer_id)
    noise = make_noise(samples, end - start, d, scale, noise_seed, device)
    token_strings = [tokenizer.decode([t]) for t in ids]
    rows: list[dict[str, Any]] = []
    for site in sites:
        site_window = 1 if site == "hidden" else window
        grid, p_clean, p_corrupted = trace_grid(model, inp, site, noise, site_window, reuse_prefix=reuse_prefix)
        fact_row.update(p_clean=p_clean, p_corrupted=p_corrupted)
        for t in range(grid.shape[0]):
            for layer in range(grid.shape[1]):
                p = float(grid[t, layer])
                rows.append(
                    {
                        "level": "cell", "fact_index": i, "subject": subject, "site": site,
                        "restore_window": site_window, "layer": layer, "token_index": t, "token": token_strings[t],
                        "is_subject": start <= t < end, "is_last_subject_token": t == end - 1,
                        "p_restored": p, "indirect_effect": p - p_corrupted,
                        "p_clean": p_clean, "p_corrupted": p_corrupted,
                    }
                )
    return [*rows, fact_row]
