"""The built-in "smollm2": the shipped GGUF dequantised once and saved as a plain checkpoint gives the
same model as loading the GGUF itself (slow: loads the GGUF, ~30 s of CPU). Skipped without the package."""

from __future__ import annotations

import pytest
import torch

from tasks.common.models import ModelNotFoundError, load_causal_lm, smollm2_gguf

pytestmark = pytest.mark.slow


def test_the_cached_checkpoint_equals_the_gguf():
    pytest.importorskip("gguf")
    try:
        gguf = smollm2_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    built, tokenizer = load_causal_lm("smollm2")
    direct, direct_tokenizer = load_causal_lm(gguf)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(ids, direct_tokenizer(prompt, return_tensors="pt").input_ids)
    with torch.inference_mode():
        logits, expected = built(ids).logits, direct(ids).logits
    assert torch.equal(logits, expected)
    assert built.dtype == torch.float32 and built.config.tie_word_embeddings
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"
