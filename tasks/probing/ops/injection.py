"""Fact injection, one optimiser step at a time on a sentence stating a new fact: after each step, per-layer
gradient norm, step-update norm and cumulative weight-change norm, the probability of the new answer
after the question and whether greedy decoding produces it (`injection_run`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from tasks.probing.ops.embeddings import model_device, next_token_probs
from tasks.probing.ops.tokens import prompt_ids


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
    """p(answer | question), product over the answer's tokens (tokenized separately, as `tasks.common.nll` scores)."""
    from tasks.common.nll import encode_example, suffix_nll

    encoded = encode_example(tokenizer, question, answer, max_length=10_000)
    n, _ = suffix_nll(model, [encoded], model_device(model))
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
    """Whether the continuation contains the expected answer text (the stopping rule of the injection)."""
    return answer.strip() in continuation


def sentence_loss(model: Any, tokenizer: Any, statement: str) -> torch.Tensor:
    """Mean next-token NLL over the statement (differentiable)."""
    from tasks.common.nll import token_nll

    nll, mask = token_nll(model, [prompt_ids(tokenizer, statement)], model_device(model))
    return (nll * mask).sum() / mask.sum()


def answer_loss(model: Any, tokenizer: Any, question: str, answer: str) -> torch.Tensor:
    """Mean NLL of the answer tokens after the question (differentiable)."""
    from tasks.common.nll import encode_example, suffix_nll

    n, length = suffix_nll(model, [encode_example(tokenizer, question, answer, 10_000)], model_device(model))
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
