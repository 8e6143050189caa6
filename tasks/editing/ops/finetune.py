"""Fine-tuning on canonical examples as the original trains (ft_experiment.py + trainer.py).

Methods
- full: every parameter trainable.
- layers: only the transformer blocks in `trainable_layers` (everything else frozen; not in the
  original, which has full / LoRA / senses; "fine-tune the last layers" is a common baseline).
- lora: peft LoRA (task CAUSAL_LM, alpha 8, dropout 0 in the original sweeps) on both MLP projections of
  a contiguous block of layers: `lora_block(L, p)` reproduces the original's block rule.

Training (trainer.train): model.eval() throughout (dropout off); batches built once in file order and
shuffled every epoch; Adam with betas (0.9, 0.995), no weight decay; cosine schedule over epochs
stepped once per epoch; an optional KL regulariser w * KL(p_orig || p_new) on one random general-text
chunk per batch, p_orig from the unedited model; gradient accumulation over `grad_acc_steps` batches.

Quirk of the original, fixed by default: zero_grad ran at the start of EVERY batch, so each optimiser
step used only the gradient of the last batch of its group of grad_acc_steps and leftover batches at
the end of an epoch never stepped (floor(N/5) steps per epoch, each from one example).
`grad_acc_quirk=True` reproduces it; the default averages the group's gradients and steps on a
partial last group too.

Simplifications: fp32 torch Adam instead of bitsandbytes 8-bit Adam; the model's own dtype instead of
bf16 autocast; no gradient checkpointing. The trained model is always a deep copy of the given one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from tasks.common.trainable import METHODS as METHODS
from tasks.common.trainable import lora_block as lora_block
from tasks.common.trainable import normalise_layers as normalise_layers
from tasks.common.trainable import prepare_model as prepare_model
from tasks.common.trainable import trainable_parameter_count as trainable_parameter_count
from tasks.editing.ops.losses import canonical_loss, cosine_factor, encode_example, kl_to_reference, suffix_nll


@dataclass
class TrainConfig:
    loss_type: str
    lr: float
    epochs: int
    batch_size: int = 1
    grad_acc_steps: int = 5
    grad_acc_quirk: bool = False
    kl_weight: float = 0.0
    max_length: int = 1024
    seed: int = 0


E = TypeVar("E")  # what `train`'s evaluate callback returns


@dataclass
class TrainHistory(Generic[E]):
    train_loss: list[float] = field(default_factory=list)  # per epoch, mean over batches (epoch 0: before)
    steps: list[int] = field(default_factory=list)  # optimiser steps made in each epoch
    evaluations: list[E] = field(default_factory=list)  # what `evaluate` returned after each epoch


def _batches(encoded: list[list], batch_size: int) -> list[list]:
    """Per-suffix encodings grouped into batches: each batch is a list of examples' [enc_suffix1, ...]."""
    return [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]


def _batch_loss(model, batch: list[list], loss_type: str, device) -> torch.Tensor:
    n_suffixes = len(batch[0])
    ns, lengths = [], []
    for j in range(n_suffixes):
        n, length = suffix_nll(model, [example[j] for example in batch], device)
        ns.append(n)
        lengths.append(length)
    return canonical_loss(torch.stack(ns, 1), torch.stack(lengths, 1), loss_type)


def _kl_loss(model, reference, chunk: Sequence[int], device) -> torch.Tensor:
    ids = torch.tensor([chunk], device=device)
    with torch.no_grad():
        ref_logits = reference(input_ids=ids).logits
    new_logits = model(input_ids=ids).logits
    return kl_to_reference(new_logits, ref_logits, torch.ones(ids.shape, device=device))


def train(
    model,
    tokenizer,
    examples,
    config: TrainConfig,
    device,
    reference=None,
    kl_chunks: Sequence[Sequence[int]] = (),
    evaluate: Callable[[Any, int], E] | None = None,
) -> TrainHistory[E]:
    """Train `model` in place on canonical `examples` (data.Example); returns losses and evaluations.

    `evaluate(model, epoch)` runs before training (epoch 0) and after each epoch, as the original logs.
    """
    if config.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {config.epochs}")
    if config.kl_weight > 0 and (reference is None or not kl_chunks):
        raise ValueError("kl_weight > 0 needs a reference model and general-text chunks")
    rng = random.Random(config.seed)
    encoded = [
        [encode_example(tokenizer, ex.prefix, s, config.max_length) for s in ex.suffixes] for ex in examples
    ]
    batches = _batches(encoded, config.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.995), weight_decay=0.0)
    history: TrainHistory[E] = TrainHistory()

    def log_epoch(epoch: int, losses: list[float], steps: int) -> None:
        history.train_loss.append(sum(losses) / max(len(losses), 1))
        history.steps.append(steps)
        if evaluate is not None:
            history.evaluations.append(evaluate(model, epoch))

    with torch.no_grad():
        initial = [float(_batch_loss(model, b, config.loss_type, device)) for b in batches]
    log_epoch(0, initial, 0)

    group = max(1, config.grad_acc_steps)
    for epoch in range(config.epochs):
        for g in optimiser.param_groups:
            g["lr"] = config.lr * cosine_factor(epoch, config.epochs)
        order = list(batches)
        rng.shuffle(order)
        losses: list[float] = []
        steps = 0
        for start in range(0, len(order), group):
            chunk = order[start : start + group]
            if config.grad_acc_quirk:
                steps += _quirk_group(model, reference, chunk, group, config, kl_chunks, rng, device, losses, optimiser)
                continue
            optimiser.zero_grad(set_to_none=True)
            for batch in chunk:
                loss = _batch_loss(model, batch, config.loss_type, device)
                total = loss
                if config.kl_weight > 0:
                    total = total + config.kl_weight * _kl_loss(model, reference, rng.choice(kl_chunks), device)
                (total / len(chunk)).backward()
                losses.append(float(loss.detach()))
            optimiser.step()
            steps += 1
        log_epoch(epoch + 1, losses, steps)
    optimiser.zero_grad(set_to_none=True)
    return history


def _quirk_group(model, reference, chunk, group, config, kl_chunks, rng, device, losses, optimiser) -> int:
    """The original's loop for one group: zero_grad before every batch; step only on a full group."""
    for i, batch in enumerate(chunk):
        optimiser.zero_grad(set_to_none=True)
        loss = _batch_loss(model, batch, config.loss_type, device)
        loss.backward()
        if config.kl_weight > 0:
            (config.kl_weight * _kl_loss(model, reference, rng.choice(kl_chunks), device)).backward()
        losses.append(float(loss.detach()))
        if i + 1 == group:
            optimiser.step()
            return 1
    return 0  # a leftover group shorter than grad_acc_steps never steps
