"""Maths of the probing family (seeds.md section D.8 "Probing ideas around factual recall").

Tensors in, tensors out; no parameters models here.

- Tokenisation variants (`variant_text`, `single_token_id`, `token_pieces`): in byte-level BPE " dog"
  and "dog" are different tokens, so every probe says which variant it touches.
- Embedding edits (`edited_embeddings`, `swap_rows`, `noise_rows`): in-place edits of rows of the input
  embedding matrix, restored exactly (a saved copy) in `finally`. With tied input/output embeddings
  (GPT-2, SmolLM2) the same rows are the unembedding, so a swap also swaps the two tokens as OUTPUTS;
  the tasks record `tied_embeddings`, and `keep_output=True` gives the output layer an unedited copy
  for the duration so that only the input side changes (the notes' question).
- Input noise (`input_noise`, `noised_distributions`): Gaussian noise added to the token-embedding output
  at chosen positions (forward hook on the embedding module; position embeddings untouched, as causal
  tracing corrupts), without any restoration. The same standard-normal draws are reused for every scale
  (common random numbers), so curves over scales differ only by the scale.
- Saliency (`token_saliency`): reuses the attribution family's forward function (p(target) at the last
  position, from token embeddings) and its methods; adds the notes' signed "gradient x embedding summed
  over the embedding dimension" and integrated gradients against a BOS / EOS / zero baseline.
- Fact injection (`injection_run`): one optimiser step at a time on a sentence stating a new fact; after
  each step, per-layer gradient norm, step-update norm and cumulative weight-change norm, the
  probability of the new answer after the question and whether greedy decoding produces it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

# ------------------------------------------------------------------------------------ tokenisation

VARIANTS: dict[str, Callable[[str], str]] = {
    "space_lower": lambda w: " " + w.lower(),
    "bare_lower": lambda w: w.lower(),
    "space_cap": lambda w: " " + w[:1].upper() + w[1:].lower(),
    "bare_cap": lambda w: w[:1].upper() + w[1:].lower(),
    "space_upper": lambda w: " " + w.upper(),
    "bare_upper": lambda w: w.upper(),
}


def variant_text(word: str, variant: str) -> str:
    """The surface form of `word` in a tokenisation variant ("space_lower" -> " cat", "bare_cap" -> "Cat")."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got variant={variant!r}")
    return VARIANTS[variant](word.strip())


def encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when it is exactly one token (no special tokens), else None."""
    ids = encode(tokenizer, text)
    return int(ids[0]) if len(ids) == 1 else None


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (the notes' detokenisation check)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """A prompt's ids with the tokenizer's default special tokens; BOS (or EOS) alone if it is empty."""
    ids = encode(tokenizer, text, special=True)
    if not ids:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [int(bos)]
    return ids


# ------------------------------------------------------------------------------------ embedding edits


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


# ------------------------------------------------------------------------------------ distributions


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def next_token_probs(model: Any, ids: Sequence[int]) -> torch.Tensor:
    """p(next token | ids): (V,) float32 on CPU."""
    x = torch.tensor([list(ids)], device=_device(model))
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
    x = torch.tensor([list(ids)] * samples, device=_device(model))
    out = []
    for scale in scales:
        with input_noise(model, positions, scale * z):
            logits = model(input_ids=x, use_cache=False).logits[:, -1].float()
        out.append(logits.softmax(-1).cpu())
    return torch.stack(out)


# ------------------------------------------------------------------------------------ saliency

SALIENCY_METHODS = ("gradient_x_input", "integrated_gradients", "norm", "input_x_gradient", "gradient_shap")
BASELINES = ("bos", "eos", "zero", "unk")


def baseline_embeddings(model: Any, tokenizer: Any, ids: torch.Tensor, baseline: str) -> torch.Tensor:
    """(1, L, d) baseline for integrated gradients: every position the BOS / EOS token's embedding, zeros,
    or the attribution family's inseq rule ("unk": unk everywhere except eos positions)."""
    from tasks.attribution.ops.gradients import baseline_ids
    from tasks.attribution.ops.lm import token_embeddings

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

    - gradient_x_input (the notes): sum over d of dp/dE_i * E_i (signed).
    - integrated_gradients: captum IntegratedGradients(multiply_by_inputs=True), Gauss-Legendre, n_steps,
      against `baseline` (bos / eos / zero / unk), summed over d (signed; completeness: the scores add up
      to p(target | E) - p(target | baseline) up to the integration error).
    - norm, input_x_gradient, gradient_shap: the attribution family's methods unchanged (non-negative,
      normalised as the ReAGent evaluation does).
    """
    from tasks.attribution.ops import gradients
    from tasks.attribution.ops.gradients import _inputs, _target_fn

    ids = ids.to(_device(model))
    if method in ("norm", "input_x_gradient", "gradient_shap"):
        attribution_methods: dict[str, Callable[..., torch.Tensor]] = {
            "norm": gradients.norm, "input_x_gradient": gradients.input_x_gradient,
            "gradient_shap": gradients.gradient_shap,
        }
        fn = attribution_methods[method]
        return fn(model, ids, int(target), tokenizer=tokenizer, seed=seed).detach().float().cpu()
    embeds = _inputs(model, ids)  # (1, L, d) leaf
    forward = _target_fn(model, int(target), log=False)  # (batch, L, d) -> (batch,) p(target)
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


# ------------------------------------------------------------------------------------ fact injection


def layer_groups(model: Any) -> list[tuple[int | None, list[torch.nn.Parameter]]]:
    """(layer index, parameters) for every transformer block, then (None, every other parameter)."""
    from tasks.common.arch import layers

    blocks = list(layers(model))
    seen: set[int] = set()
    groups: list[tuple[int | None, list[torch.nn.Parameter]]] = []
    for i, block in enumerate(blocks):
        params = list(block.parameters())
        seen.update(id(p) for p in params)
        groups.append((i, params))
    rest = [p for p in model.parameters() if id(p) not in seen]
    groups.append((None, rest))
    return groups


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """Frobenius norm of a list of tensors taken together (float64 accumulation)."""
    total = sum(float(t.detach().double().pow(2).sum()) for t in tensors)
    return math.sqrt(total)


@torch.no_grad()
def answer_probability(model: Any, tokenizer: Any, question: str, answer: str) -> float:
    """p(answer | question), product over the answer's tokens (tokenized separately, as editing scores)."""
    from tasks.editing.compute import encode_example, suffix_nll

    encoded = encode_example(tokenizer, question, answer, max_length=10_000)
    n, _ = suffix_nll(model, [encoded], _device(model))
    return math.exp(-float(n[0]))


@torch.no_grad()
def greedy_continuation(model: Any, tokenizer: Any, question: str, n_tokens: int) -> str:
    """The greedy (argmax) continuation of `question`, `n_tokens` tokens, decoded."""
    ids = prompt_ids(tokenizer, question)
    start = len(ids)
    for _ in range(n_tokens):
        ids.append(int(next_token_probs(model, ids).argmax()))
    return tokenizer.decode(ids[start:])


def answers(continuation: str, answer: str) -> bool:
    """Whether the continuation contains the expected answer text (the notes' stopping rule)."""
    return answer.strip() in continuation


def sentence_loss(model: Any, tokenizer: Any, statement: str) -> torch.Tensor:
    """Mean next-token NLL over the statement (differentiable)."""
    from tasks.editing.compute import token_nll

    nll, mask = token_nll(model, [prompt_ids(tokenizer, statement)], _device(model))
    return (nll * mask).sum() / mask.sum()


def answer_loss(model: Any, tokenizer: Any, question: str, answer: str) -> torch.Tensor:
    """Mean NLL of the answer tokens after the question (differentiable)."""
    from tasks.editing.compute import encode_example, suffix_nll

    n, length = suffix_nll(model, [encode_example(tokenizer, question, answer, 10_000)], _device(model))
    return (n / length)[0]


def injection_run(
    model: Any, tokenizer: Any, statement: str, question: str, answer: str, lr: float, max_steps: int,
    optimizer: str = "adam", loss_on: str = "sentence", stop_when_learned: bool = True, greedy_tokens: int = 4,
) -> tuple[list[dict], list[dict]]:
    """Fine-tune `model` IN PLACE (give a prepared copy) one step at a time on the statement.

    Only parameters with requires_grad train. Returns (step rows, layer rows):
    - step rows: step (0 = before training), loss (before the step's update; at step 0 the initial
      loss), p_answer, continuation, answered (after the step's update);
    - layer rows per step >= 1 and group (layer index or None for embeddings / norms / head):
      grad_norm (of the step's gradient, trainable parameters only; 0 when frozen),
      update_norm (||W_t - W_{t-1}||), weight_change_norm (||W_t - W_0||, every parameter of the group).
    Stops after the first step whose greedy continuation contains the answer when stop_when_learned.
    """
    if loss_on not in ("sentence", "answer"):
        raise ValueError(f"loss_on must be sentence or answer, got loss_on={loss_on!r}")
    groups = layer_groups(model)
    initial = {id(p): p.detach().clone() for _, ps in groups for p in ps}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameter")
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=lr, weight_decay=0.0)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=lr)
    else:
        raise ValueError(f"optimizer must be adam or sgd, got optimizer={optimizer!r}")
    answer_text = " " + answer.strip()

    def loss_fn() -> torch.Tensor:
        if loss_on == "sentence":
            return sentence_loss(model, tokenizer, statement)
        return answer_loss(model, tokenizer, question, answer_text)

    def evaluate(step: int, loss: float) -> dict:
        continuation = greedy_continuation(model, tokenizer, question, greedy_tokens)
        return {"step": step, "loss": loss, "p_answer": answer_probability(model, tokenizer, question, answer_text),
                "continuation": continuation, "answered": answers(continuation, answer)}

    with torch.no_grad():
        steps = [evaluate(0, float(loss_fn()))]
    layer_rows: list[dict] = []
    for step in range(1, max_steps + 1):
        before = {id(p): p.detach().clone() for p in trainable}
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn()
            loss.backward()
        grads = {id(p): p.grad.detach().clone() for p in trainable if p.grad is not None}
        opt.step()
        for layer, params in groups:
            layer_rows.append({
                "step": step,
                "layer": layer,
                "group": "layer" if layer is not None else "other",
                "grad_norm": _norm([grads[id(p)] for p in params if id(p) in grads]),
                "update_norm": _norm([p - before[id(p)] for p in params if id(p) in before]),
                "weight_change_norm": _norm([p - initial[id(p)] for p in params]),
                "trainable": any(p.requires_grad for p in params),
            })
        with torch.no_grad():
            steps.append(evaluate(step, float(loss.detach())))
        if stop_when_learned and steps[-1]["answered"]:
            break
    opt.zero_grad(set_to_none=True)
    return steps, layer_rows
