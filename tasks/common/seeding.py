"""Seeding: one call for the global RNGs, and explicit generators for code that should not touch them.

Tasks should prefer `torch_generator(ctx.seed)` (or `numpy.random.default_rng(ctx.seed)`) passed to the
functions that draw random numbers; `seed_everything` is for code that uses the global RNGs
(model initialisation, dropout, third-party libraries).
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["seed_everything", "torch_generator"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's `random`, NumPy's global RNG and torch (CPU and every CUDA device).

    deterministic=True also asks torch for deterministic algorithms (warn-only, so ops without a
    deterministic implementation still run) and disables cuDNN benchmarking.
    """
    import numpy as np
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got seed={seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy global seed must fit in 32 bits
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def torch_generator(seed: int, device: Any = "cpu"):
    """A `torch.Generator` on `device` seeded with `seed`: pass it as `generator=` to torch.randn etc."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
