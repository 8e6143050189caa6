"""The embedding.hidden_states task end to end on a tiny BERT: artifacts, layout, determinism."""

import json

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.context import local_context
from tasks.common.artifacts import EmbeddingFile, find_layer
from tasks.embedding.task import HiddenStatesParams, hidden_states


def run(tiny_bert, tmp_path, run_id="r", **params):
    ctx = local_context(run_id=run_id, seed=7, root=tmp_path, setup=tiny_bert)
    p = HiddenStatesParams(**{"n_train": 12, "n_test": 4, "max_length": 32, "max_tokens": 24, "batch_size": 5,
                              **params})
    return hidden_states(p, ctx), ctx


def test_artifacts_are_safetensors_and_json_not_pickle(tiny_bert, tmp_path):
    rows, ctx = run(tiny_bert, tmp_path, layer=[0, 2])
    names = sorted(p.name for p in ctx.artifact_dir.iterdir())
    assert names == ["layer0.safetensors", "layer2.safetensors", "meta.json", "texts.jsonl"]
    for path in ctx.artifact_dir.iterdir():
        assert path.read_bytes()[:1] != b"\x80"  # no pickle protocol header anywhere
    tensors = load_file(ctx.artifact_dir / "layer2.safetensors")
    assert tensors["hidden"].shape == (16, 32, 32) and tensors["labels"].abs().eq(1).all()
    assert int(tensors["labels"].sum()) == 0 and int(tensors["is_test"].sum()) == 4
    texts = [json.loads(line) for line in (ctx.artifact_dir / "texts.jsonl").read_text().splitlines()]
    assert [t["label"] for t in texts] == tensors["labels"].tolist()
    assert all(t["tokens"] < 24 for t in texts)
    assert [r["hidden_layer"] for r in rows] == [0, 2] and rows[0]["n_texts"] == 16


def test_layer_zero_file_is_the_embedding_output(tiny_bert, tmp_path):
    model, _ = tiny_bert
    _, ctx = run(tiny_bert, tmp_path)
    t = load_file(ctx.artifact_dir / "layer0.safetensors")
    with torch.inference_mode():
        expected = model.embeddings(input_ids=t["input_ids"])
    torch.testing.assert_close(t["hidden"], expected, rtol=1e-5, atol=1e-6)


def test_deterministic_rows_and_files(tiny_bert, tmp_path):
    rows_a, a = run(tiny_bert, tmp_path, run_id="a")
    rows_b, b = run(tiny_bert, tmp_path, run_id="b")
    assert rows_a == rows_b
    ta, tb = (load_file(c.artifact_dir / "layer0.safetensors") for c in (a, b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_reader_and_upstream_lookup(tiny_bert, tmp_path):
    _, ctx = run(tiny_bert, tmp_path, layer=1, padding="longest")
    emb = EmbeddingFile.open(ctx.artifact_dir / "layer1.safetensors")
    assert emb.shape == (16, 32, 32) and emb.metadata["layer"] == "1"
    real = emb.eligible(5, rows="real")
    assert all(int(emb.n_real[j]) >= 5 for j in real)
    X = emb.read(real[:3].tolist(), 5, 8)
    assert X.shape == (3, 5, 8) and X.dtype == torch.float64

    class Up:  # an orchestrator Upstream entry
        run_id, artifact_dir = "u", ctx.artifact_dir

    assert find_layer([Up()], 1, "embed").path.name == "layer1.safetensors"
    with pytest.raises(LookupError, match=r"layer0\.safetensors"):
        find_layer([Up()], 0, "embed")


def test_params_validation():
    with pytest.raises(ValueError, match="max_tokens"):
        HiddenStatesParams(max_tokens=200, max_length=128)
    with pytest.raises(ValueError, match="n_train \\+ n_test"):
        HiddenStatesParams(n_train=0)


def test_setup_loads_builtin_encoder_once_per_model(tmp_path):
    # setup=load_encoder keyed on `model`: the built-in tiny-bert through tasks.common
    from orchestrator.registry import get_task

    definition = get_task("embedding.hidden_states")
    assert definition.setup_keys == ("model",)
    params = HiddenStatesParams(n_train=6, max_length=32, max_tokens=24)
    ctx = local_context(seed=0, root=tmp_path)
    ctx.setup = definition.setup(params, ctx)
    (row,) = hidden_states(params, ctx)
    assert row["width"] == ctx.setup[0].config.hidden_size and row["n_texts"] == 6
