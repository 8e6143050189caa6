"""Shared by the unit tests of every family: one torch thread, and a tiny BERT."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread, torch seeded: on a shared 2-core machine two threads run tiny models ~10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(model, tokenizer): a tiny BERT (hidden 32, 2 layers, 64 positions) built in this session with
    tasks.common's builder; read-only by convention."""
    from transformers import AutoModel, AutoTokenizer

    from tasks.common.tiny import build_tiny_encoder

    path = build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), hidden_size=32, intermediate_size=64,
                              max_position_embeddings=64)
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
