"""Fixtures for tasks.common tests: tiny models built once per session into a temporary directory."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Freshly built tiny models (seed 0, built-in corpus): {"gpt2": dir, "llama": dir, "bert": dir}."""
    from tasks.common.tiny import build_tiny_causal_lm, build_tiny_encoder

    root = tmp_path_factory.mktemp("tiny")
    return {
        "gpt2": build_tiny_causal_lm(root / "gpt2", arch="gpt2"),
        "llama": build_tiny_causal_lm(root / "llama", arch="llama"),
        "bert": build_tiny_encoder(root / "bert"),
    }


@pytest.fixture(scope="session")
def tiny_cache_root(tmp_path_factory):
    """A session-wide cache directory for the built-in names, so they are built at most once."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture
def tiny_cache(tiny_cache_root, monkeypatch):
    """Point INTERP_SWEEPS_CACHE at the session's cache (never the user's ~/.cache) for one test."""
    monkeypatch.setenv("INTERP_SWEEPS_CACHE", str(tiny_cache_root))
    return tiny_cache_root
