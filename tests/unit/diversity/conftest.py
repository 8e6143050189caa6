"""Fixtures for the diversity tests: a tiny base model and a copy fine-tuned hard on a narrow text."""

from __future__ import annotations

from pathlib import Path

import pytest

# Fine-tuning recipe of the must-show test: a few hundred tokens of one narrow text, 100 AdamW steps.
NARROW_STEPS = 100
NARROW_LR = 5e-3


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, Path]:
    """{"base": a fresh tiny GPT-2 (random weights), "narrow": the same model fine-tuned on data.NARROW_TEXT}."""
    from tasks.common.models import load_causal_lm
    from tasks.common.tiny import build_tiny_causal_lm
    from tasks.diversity.data import NARROW_TEXT
    from tasks.diversity.ops.finetune import finetune_on_text

    root = tmp_path_factory.mktemp("diversity-models")
    base = build_tiny_causal_lm(root / "base", arch="gpt2", seed=0)
    model, tokenizer = load_causal_lm(base)
    losses = finetune_on_text(model, tokenizer, NARROW_TEXT * 8, steps=NARROW_STEPS, lr=NARROW_LR, seed=0)
    assert losses[-1] < 0.5 * losses[0], f"narrow fine-tuning did not converge: {losses[0]:.2f} -> {losses[-1]:.2f}"
    narrow = root / "narrow"
    model.save_pretrained(narrow)
    tokenizer.save_pretrained(narrow)
    return {"base": base, "narrow": narrow}


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT for the cosine metrics' plumbing (its embeddings carry no meaning)."""
    from tasks.common.tiny import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("diversity-encoder") / "bert")
