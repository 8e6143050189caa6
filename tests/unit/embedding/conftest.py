"""Shared set-up for the sensitivity unit tests: one torch thread (the ops are tiny; extra threads only
contend on a shared 2-core machine), seeded global RNGs."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(model, tokenizer): a tiny BERT (hidden 32, 2 layers, 64 positions) built in this session with
    tasks.common's builder; read-only by convention."""
    from transformers import AutoModel, AutoTokenizer

    from tasks.common.tiny import build_tiny_encoder

    path = build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), hidden_size=32, intermediate_size=64,
                              max_position_embeddings=64)
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
