"""Fixtures for the attribution tests: tiny causal LMs built in the session, and one trained to copy.

`copy_lm` is the planted-answer model: every sequence holds L - 1 "filler" tokens and exactly one
"marked" token (drawn from a small marked set) at a random position, and ends with a query token; the
model is trained to predict the marked token at the query. So the marked position (with the query)
is where the answer lives, and a faithful attribution must put its mass there.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@contextlib.contextmanager
def one_thread():
    """One torch thread: on the shared 2-core machine two spinning threads per process made the copy-model
    training 30x slower (143 s against 4.7 s measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="package", autouse=True)
def _one_thread_for_this_package():
    with one_thread():
        yield


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tag-map caches and built-in tiny models go to a session temp dir, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTERP_SWEEPS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    from tasks.common.tiny import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("tiny")
    return {"gpt2": build_tiny_causal_lm(root / "gpt2", arch="gpt2"),
            "llama": build_tiny_causal_lm(root / "llama", arch="llama")}


@pytest.fixture(scope="session")
def tiny_lm(tiny_paths):
    """(model, tokenizer): random tiny GPT-2, eager attention."""
    from tasks.common.models import load_causal_lm

    return load_causal_lm(tiny_paths["gpt2"], attn_implementation="eager")


@pytest.fixture(scope="session")
def tiny_llama(tiny_paths):
    from tasks.common.models import load_causal_lm

    return load_causal_lm(tiny_paths["llama"], attn_implementation="eager")


@dataclass
class CopyTask:
    model: object
    tokenizer: object
    filler: torch.Tensor  # ids
    marked: torch.Tensor  # ids
    query: int
    length: int
    accuracy: float

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (n, L), targets (n,), marked positions (n,))."""
        x = self.filler[torch.randint(len(self.filler), (n, self.length), generator=generator)]
        pos = torch.randint(0, self.length - 1, (n,), generator=generator)
        y = self.marked[torch.randint(len(self.marked), (n,), generator=generator)]
        x[torch.arange(n), pos] = y
        x[:, -1] = self.query
        return x, y, pos


@pytest.fixture(scope="session")
def copy_lm(tmp_path_factory) -> CopyTask:
    """A tiny GPT-2 trained (250 AdamW steps, lr 5e-3 decayed linearly to 0; ~5 s) to copy the marked token."""
    from tasks.common.models import load_causal_lm
    from tasks.common.tiny import build_tiny_causal_lm

    path = build_tiny_causal_lm(tmp_path_factory.mktemp("copy"), arch="gpt2", seed=0)
    model, tokenizer = load_causal_lm(path, attn_implementation="eager")
    task = CopyTask(model, tokenizer, filler=torch.arange(10, 26), marked=torch.arange(100, 108), query=301,
                    length=8, accuracy=0.0)
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 250)
        model.train()
        for _ in range(250):
            x, y, _ = task.batch(32, gen)
            loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits[:, -1], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
    x, y, _ = task.batch(256, gen)
    with torch.no_grad():
        task.accuracy = float((model(input_ids=x).logits[:, -1].argmax(-1) == y).float().mean())
    return task
