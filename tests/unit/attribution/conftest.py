"""Fixtures for the attribution tests: tiny causal LMs built in the session, and one trained to copy.

`copy_lm` is the planted-answer model of `tasks.attribution.planted`: every sequence holds filler
tokens and exactly one "marked" token (from a small marked set) at a random position, and ends with a
query token; the model is trained to predict the marked token at the query. So the marked position
(with the query) is where the answer lives, and a faithful attribution must put its mass there.
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
    accuracy: float

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (n, L), targets (n,), marked positions (n,))."""
        from tasks.attribution.planted import copy_batch

        return copy_batch(n, generator)


@pytest.fixture(scope="session")
def copy_lm(tmp_path_factory) -> CopyTask:
    """The planted-answer model (tasks.attribution.planted): tiny GPT-2 trained ~5 s to copy the marked token."""
    from tasks.attribution.planted import accuracy, train_copy_model
    from tasks.common.models import load_causal_lm

    path = train_copy_model(tmp_path_factory.mktemp("copy") / "model")
    model, tokenizer = load_causal_lm(path, attn_implementation="eager")
    return CopyTask(model, tokenizer, accuracy(model))
