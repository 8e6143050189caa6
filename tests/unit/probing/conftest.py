"""Fixtures for the probing tests: a tiny GPT-2 trained in the session to answer planted questions.

`planted_lm`: the common tiny GPT-2 (2 layers, d=64, tokenizer trained on the common corpus, so " cat",
" dog", " red", " blue" are single tokens), trained ~2 s on
  "The cat is red."  /  "The dog is blue."  plus a few other animals and colours,
so "The cat is" -> " red" and "The dog is" -> " blue": the answer depends on exactly one input token.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PLANTED = {"cat": "red", "dog": "blue", "bird": "green", "fish": "yellow", "horse": "black", "cow": "white"}


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTERP_SWEEPS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def planted_lines() -> list[str]:
    return [f"The {animal} is {colour}." for animal, colour in PLANTED.items()]


@pytest.fixture(scope="session")
def planted_lm(tmp_path_factory):
    """(model, tokenizer): tiny GPT-2 that answers "The <animal> is" with its planted colour (greedy)."""
    from tasks.common.corpus import corpus_lines
    from tasks.common.models import load_causal_lm
    from tasks.common.tiny import build_tiny_causal_lm

    path = build_tiny_causal_lm(tmp_path_factory.mktemp("planted") / "model", arch="gpt2", seed=0)
    model, tokenizer = load_causal_lm(path)
    general = corpus_lines()[:30]
    lines = planted_lines() * 6 + general
    encoded = [tokenizer(line)["input_ids"] for line in lines]
    rng = random.Random(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(150):
            batch = rng.sample(encoded, 16)
            width = max(map(len, batch))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in batch])
            labels = torch.tensor([s + [-100] * (width - len(s)) for s in batch])
            loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    for animal, colour in PLANTED.items():
        ids = tokenizer(f"The {animal} is")["input_ids"]
        with torch.no_grad():
            top = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        assert tokenizer.decode([top]) == f" {colour}", (animal, tokenizer.decode([top]))
    return model, tokenizer
