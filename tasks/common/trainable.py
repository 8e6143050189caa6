"""Which parameters of a causal LM train: full, chosen blocks, or LoRA on the MLP projections of a block.

Shared by editing (canonical-examples fine-tuning, Hewitt et al. 2024: the original's ft_experiment.py
rules, see tasks/editing/ops/finetune.py) and probing (fact injection). `prepare_model` always returns a deep
copy, so the caller's (setup) model is never trained.
- full: every parameter trainable.
- layers: only the transformer blocks in `trainable_layers` (everything else frozen).
- lora: peft LoRA (task CAUSAL_LM) on both MLP projections of a contiguous block of layers:
  `lora_block(L, p)` reproduces the original's block rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from tasks.common.arch import layers, mlp_projections, num_layers

METHODS = ("full", "layers", "lora")


def lora_block(n_layers: int, fraction: float) -> list[int]:
    """The original's LoRA layer block: c = ceil(L p), mid = L // 2, layers mid - c//2 .. mid + c//2 (+1 if
    c is odd), inclusive, so c + 1 indices; an index equal to L matched nothing there and is dropped here."""
    if not 0 < fraction <= 1:
        raise ValueError(f"lora_layer_fraction must be in (0, 1], got {fraction}")
    c = math.ceil(n_layers * fraction)
    mid = n_layers // 2
    start, end = mid - c // 2, mid + c // 2 + (c % 2)
    return [i for i in range(max(0, start), end + 1) if i < n_layers]


def normalise_layers(indices: Sequence[int], n_layers: int) -> list[int]:
    """Layer indices with negatives counted from the end; errors name the bad index."""
    out = []
    for i in indices:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ValueError(f"layer index {i} out of range for a model with {n_layers} layers")
        out.append(j)
    return sorted(set(out))


def prepare_model(
    model,
    method: str,
    trainable_layers: Sequence[int] | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 8.0,
    lora_dropout: float = 0.0,
    lora_layer_fraction: float = 0.5,
    seed: int = 0,
):
    """A deep copy of `model` with the method's parameters trainable (and LoRA adapters injected; their
    random initialisation is drawn from `seed`, without touching the global RNG)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    trained = copy.deepcopy(model)
    trained.zero_grad(set_to_none=True)  # deepcopy copies .grad too
    trained.eval()  # dropout off during training, as the original
    n_layers = num_layers(trained)
    if method == "full":
        for p in trained.parameters():
            p.requires_grad_(True)
        return trained
    if method == "layers":
        chosen = normalise_layers(trainable_layers if trainable_layers is not None else [-1], n_layers)
        for p in trained.parameters():
            p.requires_grad_(False)
        blocks = layers(trained)
        for i in chosen:
            for p in blocks[i].parameters():
                p.requires_grad_(True)
        return trained
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    chosen = (
        normalise_layers(trainable_layers, n_layers)
        if trainable_layers is not None
        else lora_block(n_layers, lora_layer_fraction)
    )
    names = {id(m): n for n, m in trained.named_modules()}
    targets = [m for i in chosen for m in mlp_projections(trained, i)]
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora_rank,
        lora_alpha=lora_alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides it (alpha / r)
        lora_dropout=lora_dropout,
        target_modules=[names[id(m)] for m in targets],
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in targets),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(trained, config)
    peft_model.eval()
    return peft_model


def trainable_parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
