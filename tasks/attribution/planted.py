"""A tiny causal LM with a planted answer, to check that attributions find it (offline, seconds on a CPU).

The copy task: a sequence of LENGTH - 1 filler tokens in which exactly one position holds a "marked"
token (one of a small marked set), followed by a query token; the answer at the query is the marked
token. A model trained on it reads the answer from one known position (and needs the query), so a
faithful attribution puts its mass there and beats a random one on Soft-NS.

`copy_model_path()` builds the built-in "tiny-gpt2-copy" on first use: `tasks.common.tiny`'s tiny GPT-2
(seed 0, 512-token BPE), trained 250 AdamW steps (batch 32, lr 5e-3 decayed linearly to 0) on one torch
thread (about 5 s; two threads on a busy 2-core machine took 30x longer); accuracy ~1.0. Cached under
`$INTERP_SWEEPS_CACHE/tiny/` (or ~/.cache/interp-sweeps/tiny) like the other tiny models.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

COPY_VERSION = 1
FILLER = tuple(range(10, 26))  # single-byte tokens of the tiny BPE
MARKED = tuple(range(100, 108))
QUERY = 301
LENGTH = 8
BUILTIN = {"tiny-gpt2-copy"}


def copy_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (n, LENGTH), answers (n,), marked positions (n,)); the query is the last token."""
    filler, marked = torch.tensor(FILLER), torch.tensor(MARKED)
    x = filler[torch.randint(len(filler), (n, LENGTH), generator=generator)]
    pos = torch.randint(0, LENGTH - 1, (n,), generator=generator)
    y = marked[torch.randint(len(marked), (n,), generator=generator)]
    x[torch.arange(n), pos] = y
    x[:, -1] = QUERY
    return x, y, pos


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_copy_model(path: str | os.PathLike, steps: int = 250, lr: float = 5e-3, seed: int = 0) -> Path:
    """Build the tiny GPT-2 at `path`, train it on the copy task, save it there; return `path`."""
    from transformers import AutoModelForCausalLM

    from tasks.common.tiny import build_tiny_causal_lm

    path = Path(build_tiny_causal_lm(path, arch="gpt2", seed=seed))
    model = AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
        model.train()
        for _ in range(steps):
            x, y, _ = copy_batch(32, gen)
            loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits[:, -1], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval().save_pretrained(path)
    return path


def copy_model_path(name: str = "tiny-gpt2-copy") -> Path:
    """The cached "tiny-gpt2-copy" directory, trained on first use (safe under concurrent callers)."""
    from tasks.common.tiny import cached_build

    return cached_build(f"tiny-gpt2-copy-v{COPY_VERSION}", train_copy_model)


def accuracy(model: Any, n: int = 256, seed: int = 123) -> float:
    x, y, _ = copy_batch(n, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return float((model(input_ids=x.to(next(model.parameters()).device)).logits[:, -1].argmax(-1).cpu() == y)
                     .float().mean())
