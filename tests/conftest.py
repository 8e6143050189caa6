"""Shared fixtures: seeded RNGs, one local Ray per test session (with logical GPUs), spec writing."""

from __future__ import annotations

import os
import random
import tempfile
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are built once per test session, not into the user's cache (Ray workers inherit this).
os.environ.setdefault("INTERP_SWEEPS_CACHE", tempfile.mkdtemp(prefix="interp-sweeps-test-cache-"))


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 4 logical CPUs and 2 logical GPUs, shared by the integration tests."""
    from orchestrator import cluster

    started = cluster.connect(num_cpus=4, num_gpus=2)
    yield
    if started:
        cluster.shutdown()


@pytest.fixture
def write_spec(tmp_path: Path):
    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
