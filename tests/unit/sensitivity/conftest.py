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
