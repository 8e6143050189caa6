"""The sensitivity task adapters called directly: rows, validation, determinism, upstream embeddings."""

import math

import pytest
import torch

from orchestrator.context import Upstream, local_context
from tasks.common.artifacts import write_layer
from tasks.sensitivity.task import GeneralisationParams, WordSensitivityParams, generalisation, word_sensitivity


def test_rows_have_the_original_columns():
    rows = word_sensitivity(WordSensitivityParams(map="rf", d=8, n=6, repetitions=3), local_context(seed=1))
    assert len(rows) == 3 and [r["rep"] for r in rows] == [0, 1, 2]
    assert all({"d", "n", "L", "S", "norm"} <= r.keys() and r["S"] > 0 for r in rows)
    assert rows[0]["search_steps"] == 300 and rows[0]["search_lr"] == 100.0
    g = generalisation(GeneralisationParams(map="raf", d=4, n=3, N=6, steps=5), local_context(seed=1))
    assert list(g[0])[:7] == ["n", "d", "N", "t0", "t1", "D0", "D1"]  # the original's file order


@pytest.mark.parametrize("params", [
    WordSensitivityParams(map="raf_relu", d=6, n=5, steps=20, repetitions=2),
    WordSensitivityParams(map="drf", L=2, d=4, n=4, steps=10),
])
def test_same_seed_same_numbers(params):
    a = word_sensitivity(params, local_context(seed=3))
    assert a == word_sensitivity(params, local_context(seed=3))
    assert a != word_sensitivity(params, local_context(seed=4))


def test_generalisation_same_seed_same_numbers():
    p = GeneralisationParams(map="rf", training="total", optim="feat_align", d=4, n=3, N=6, steps=10, repetitions=2)
    assert generalisation(p, local_context(seed=5)) == generalisation(p, local_context(seed=5))


def test_validation_messages():
    with pytest.raises(ValueError, match="L is the depth of drf"):
        WordSensitivityParams(map="rf", L=2)
    with pytest.raises(ValueError, match="token_index must be in"):
        WordSensitivityParams(n=4, token_index=4)
    with pytest.raises(ValueError):
        WordSensitivityParams(map="attention")


def test_memory_guards():
    with pytest.raises(MemoryError, match="max_weight_gb=1"):
        word_sensitivity(WordSensitivityParams(map="drf", L=3, d=256, n=40, max_weight_gb=1), local_context())
    with pytest.raises(MemoryError, match="generalisation with N=1300"):
        generalisation(GeneralisationParams(N=1300, n=120, d=768, max_weight_gb=2), local_context())


@pytest.fixture
def upstream(tmp_path):
    """A fake embedding artifact (layer 3): 10 texts, 12 positions, width 16; text j has 4 + j real tokens."""
    N, T, width = 10, 12, 16
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(T)[None] < (4 + torch.arange(N))[:, None]).long()
    write_layer(tmp_path, 3, {
        "hidden": torch.randn(N, T, width, generator=g) * 3, "input_ids": torch.zeros(N, T, dtype=torch.long),
        "attention_mask": mask, "labels": torch.tensor([1, -1] * 5), "is_test": torch.zeros(N, dtype=torch.long),
        "n_computed": torch.full((N,), T)}, {"layer": "3"})
    return {"embed": [Upstream(stage="embed", run_id="e3", params={"layer": 3}, artifact_dir=tmp_path)]}


def test_upstream_samples_are_rescaled_rows(upstream):
    p = WordSensitivityParams(dataset="upstream", layer=3, map="raf", d=8, n=6, steps=5, repetitions=3)
    rows = word_sensitivity(p, local_context(seed=0, upstream=upstream))
    assert all(0 <= r["sample"] < 10 and r["label"] in (1, -1) for r in rows)
    # rows rescaled to sqrt(d): RAF outputs are convex combinations, so ||phi|| <= sqrt(n d)
    assert all(r["norm"] <= math.sqrt(6 * 8) + 1e-9 for r in rows)
    real = word_sensitivity(p.model_copy(update={"rows": "real", "n": 12}), local_context(seed=0, upstream=upstream))
    assert {r["sample"] for r in real} <= {8, 9}  # only texts with >= 12 real tokens


def test_upstream_generalisation_uses_distinct_texts(upstream):
    p = GeneralisationParams(dataset="upstream", layer=3, map="raf", d=8, n=4, N=9, steps=5)
    (row,) = generalisation(p, local_context(seed=0, upstream=upstream))
    assert row["y"] in (1.0, -1.0) and row["t1"] == pytest.approx(row["y"], abs=1e-8)
    with pytest.raises(ValueError, match="need 11"):
        generalisation(p.model_copy(update={"N": 10}), local_context(seed=0, upstream=upstream))


def test_upstream_errors(upstream):
    with pytest.raises(LookupError, match="needs the stage 'embed'"):
        word_sensitivity(WordSensitivityParams(dataset="upstream", layer=3), local_context())
    with pytest.raises(LookupError, match=r"layer0\.safetensors"):
        word_sensitivity(WordSensitivityParams(dataset="upstream", layer=0), local_context(upstream=upstream))
    with pytest.raises(ValueError, match="width 16"):
        word_sensitivity(WordSensitivityParams(dataset="upstream", layer=3, d=32, n=4),
                         local_context(upstream=upstream))
