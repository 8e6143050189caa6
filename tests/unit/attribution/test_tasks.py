"""Analogy preparation, the two tasks end to end on a tiny model, and the report tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.context import local_context
from orchestrator.registry import get_task
from tasks.attribution import data
from tasks.attribution.report import example_table, method_table, to_markdown

DATA = Path("/work/shared/data")
ROW_COLUMNS = {"example_text", "target_token", "method", "soft_ns", "soft_nc", "random_soft_ns", "random_soft_nc"}


def test_parse_analogies_pairs():
    # invariant: each question gives two pairs; duplicates dropped, first-seen order kept
    lines = [": capital-world", "Athens Greece Baghdad Iraq", "Athens Greece Cairo Egypt", ": family",
             "boy girl king queen"]
    parsed = data.parse_analogies(lines)
    assert parsed == {"capital-world": [("Athens", "Greece"), ("Baghdad", "Iraq"), ("Cairo", "Egypt")],
                      "family": [("boy", "girl"), ("king", "queen")]}


@pytest.mark.skipif(not (DATA / "analogies/questions-words.txt").exists(), reason="shared data absent")
def test_parse_the_real_test_set():
    # invariant: the Google set parses into its 14 categories, with the expected first pair
    parsed = data.parse_analogies(data.analogy_lines(str(DATA / "analogies/questions-words.txt")))
    assert len(parsed) == 14 and set(parsed) == set(data.TEMPLATES)
    assert parsed["capital-common-countries"][0] == ("Athens", "Greece")
    assert len(parsed["capital-common-countries"]) == 23


@pytest.mark.skipif(not (DATA / "reagent/analogies_prepared/gpt2.jsonl").exists(), reason="shared data absent")
def test_read_the_originals_prepared_inputs(tiny_lm):
    # invariant: the original's 157 gpt2-medium inputs load; a tokenizer too small for their ids is refused
    examples = data.read_prepared(DATA / "reagent/analogies_prepared/gpt2.jsonl")
    assert len(examples) == 157 and examples[0].target_text == " Athens" and len(examples[0].prefix) == 42
    with pytest.raises(ValueError, match="gpt2-medium"):
        data.read_prepared(DATA / "reagent/analogies_prepared/gpt2.jsonl", tiny_lm[1])


def test_currency_patch_by_value_and_by_index():
    # invariant: by_value capitalises euro/won wherever they are; by_index overwrites positions 4 and 6
    pairs = [(f"c{i}", f"w{i}") for i in range(7)]
    pairs[1] = ("Europe", "euro")
    assert data._patch_currency(pairs, "by_value")[1] == ("Europe", "Euro")
    patched = data._patch_currency(pairs, "by_index")
    assert patched[4] == ("c4", "Euro") and patched[6] == ("c6", "Won") and patched[1] == ("Europe", "euro")


def test_prepare_analogies_on_tiny_model(tiny_lm):
    # invariant: without the filters every built-in pair becomes one example whose target is the
    # sentence's last token; the greedy filter of an untrained model keeps (almost) nothing
    model, tok = tiny_lm
    lines = data.analogy_lines("builtin")
    n_pairs = sum(len(p) for c, p in data.parse_analogies(lines).items() if c in data.TEMPLATES)
    loose = data.prepare_analogies(model, tok, lines, single_token_rule="none", require_correct=False)
    assert len(loose) == n_pairs
    e = loose[0]
    full = tok(e.text)["input_ids"]
    assert list(e.prefix) == full[:-1] and e.target == full[-1]
    strict = data.prepare_analogies(model, tok, lines, single_token_rule="none", require_correct=True)
    assert len(strict) < len(loose) / 2


def _run(name, seed=0, **params):
    td = get_task(name)
    p = td.params(**params)
    ctx = local_context(seed=seed)
    ctx.setup = td.setup(p, ctx)
    return td.fn(p, ctx), ctx


FAST = dict(max_steps=15, num_probes=3, keep_top_n=2, sampler="uniform")


@pytest.mark.parametrize("method", ["reagent", "integrated_gradients", "attention_rollout"])
def test_analogies_task_rows(method):
    # invariant: one long-format row per (example, target, method), finite metrics, seeded
    kw = dict(method=method, categories=["gram2-opposite"], single_token_rule="none", require_correct=False,
              max_examples=2, **FAST)
    rows, ctx = _run("attribution.analogies", **kw)
    again, _ = _run("attribution.analogies", **kw)
    assert len(rows) == 2 and set(rows[0]) >= ROW_COLUMNS
    assert all(r["method"] == method for r in rows)
    for r in rows:
        assert all(math.isfinite(r[m]) for m in ("soft_ns", "soft_nc", "random_soft_ns", "random_soft_nc"))
        assert all(isinstance(v, (int, float, bool, str, type(None))) for v in r.values())
    assert [r["soft_ns"] for r in rows] == [r["soft_ns"] for r in again]
    assert (ctx.artifact_dir / "importance.json").exists()


def test_unconverged_targets_score_as_the_original_under_nan_and_the_report_keeps_the_rules_apart():
    # invariant: on_no_convergence="nan" scores a target no probe stopped on Soft-NS 0 / Soft-NC 1 (the
    # original's NaN scores), changes nothing else, and the report says which rule made each ReAGent line.
    # Setting: the analogies stage of sweeps/reagent_small.yaml (measured: 5 of 8 targets unconverged,
    # log_ratio_nc -1.77 with mean_all, +4.75 with nan)
    kw = dict(method="reagent", categories=["gram2-opposite", "gram9-plural-verbs"], single_token_rule="none",
              require_correct=False, max_steps=30, num_probes=3)
    runs = {rule: pd.DataFrame(_run("attribution.analogies", on_no_convergence=rule, **kw)[0])
            for rule in ("mean_all", "nan")}
    mean_all, nan = runs["mean_all"], runs["nan"]
    unconverged = ~nan["converged"].astype(bool)
    assert 0 < unconverged.sum() < len(nan)
    assert (nan.loc[unconverged, "soft_ns"] == 0).all() and (nan.loc[unconverged, "soft_nc"] == 1).all()
    assert (mean_all.loc[unconverged, "soft_nc"] < 1).all()
    for column in ("soft_ns", "soft_nc"):
        assert nan.loc[~unconverged, column].tolist() == mean_all.loc[~unconverged, column].tolist()
    for column in ("random_soft_ns", "random_soft_nc", "converged"):
        assert nan[column].tolist() == mean_all[column].tolist()
    baseline = pd.DataFrame(_run("attribution.analogies", **{**kw, "method": "attention"})[0])
    rows = pd.concat([mean_all.assign(on_no_convergence="mean_all"), nan.assign(on_no_convergence="nan"),
                      baseline.assign(on_no_convergence="nan")])
    table = method_table(rows).set_index(["method", "on_no_convergence"])
    assert sorted(table.index) == [("attention", ""), ("reagent", "mean_all"), ("reagent", "nan")]
    assert table.loc[("reagent", "mean_all"), "log_ratio_nc"] < 0 < table.loc[("reagent", "nan"), "log_ratio_nc"]
    assert set(example_table(rows)["on_no_convergence"]) == {"", "mean_all", "nan"}


def test_sequence_task_rows():
    # invariant: stride 2 over 4 new tokens scores generated positions 0 and 2 of each prompt
    rows, _ = _run("attribution.sequence", method="reagent", max_prompts=2, max_new_tokens=4, stride=2, **FAST)
    assert [(r["prompt_id"], r["target_index"]) for r in rows] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert set(rows[0]) >= ROW_COLUMNS and rows[0]["generated_text"].startswith(rows[0]["example_text"][:5])


def test_sequence_original_attention_is_inseq_last_layer():
    # invariant: original_sequence_attention makes "attention" the last layer's row, not softmaxed
    import json

    import torch

    from tasks.attribution.ops.attention import attention_maps

    rows, ctx = _run("attribution.sequence", method="attention", max_prompts=1, max_new_tokens=2, stride=1,
                     original_sequence_attention=True)
    assert len(rows) == 2
    scores = json.loads((ctx.artifact_dir / "importance.json").read_text())[0]["scores"]
    model = ctx.setup["model"]
    ids = ctx.setup["tokenizer"](rows[0]["example_text"])["input_ids"]
    expected = attention_maps(model, torch.tensor(ids))[-1, -1]
    assert scores == pytest.approx((expected / expected.sum()).tolist(), abs=1e-6)


def _fake_rows():
    rows = []
    for method, ns, nc in (("reagent", 0.4, 0.2), ("attention", 0.01, 0.01)):
        for prompt in range(2):
            for t in range(2):
                rows.append({"model": "m", "method": method, "prompt_id": prompt, "target_pos": 10 + t,
                             "target_token": f"t{t}", "soft_ns": ns * (1 + prompt), "soft_nc": nc,
                             "random_soft_ns": 0.02, "random_soft_nc": 0.01})
    return pd.DataFrame(rows)


def test_method_table_log_ratios():
    # invariant: ln(sum of per-prompt means / sum of random per-prompt means), per method
    table = method_table(_fake_rows()).set_index("method")
    assert table.loc["reagent", "log_ratio_ns"] == pytest.approx(math.log((0.4 + 0.8) / 0.04))
    assert table.loc["reagent", "log_ratio_nc"] == pytest.approx(math.log(0.2 / 0.01))
    assert table.loc["attention", "log_ratio_nc"] == pytest.approx(0.0)
    assert table.loc["reagent", "n_examples"] == 2 and table.loc["reagent", "n_targets"] == 4
    assert "| method |" in to_markdown(method_table(_fake_rows(), by=["method"]))


def test_example_table_matches_readme_layout():
    # invariant: per prompt, '$'-joined targets and ln(sum NS / sum random NS)
    table = example_table(_fake_rows(), by=["method"])
    first = table[(table.method == "reagent") & (table.prompt_id == 0)].iloc[0]
    assert first.target_tokens == "t0$t1"
    assert first.metric_soft_ns == pytest.approx(math.log(0.8 / 0.04))


def test_planted_task_finds_the_answer(monkeypatch, copy_lm, tmp_path):
    # invariant: on the planted model, ReAGent's rows put the top weight on the marked token and beat
    # random on Soft-NS, while softmaxed attention does not find it as often
    from tasks.attribution import task as task_module

    monkeypatch.setattr(task_module, "load",
                        lambda params, ctx: {"model": copy_lm.model, "tokenizer": copy_lm.tokenizer, "samplers": {}})
    td = get_task("attribution.planted")
    out = {}
    for method in ("reagent", "attention"):
        p = td.params(method=method, n_examples=12)
        ctx = local_context(seed=3)
        ctx.setup = task_module.load(p, ctx)
        out[method] = pd.DataFrame(td.fn(p, ctx))
    reagent_rows = out["reagent"]
    assert len(reagent_rows) == 12 and {"marked_pos", "mass_on_marked", "top_is_marked"} <= set(reagent_rows)
    assert reagent_rows.top_is_marked.mean() >= 0.7
    assert reagent_rows.soft_ns.mean() > reagent_rows.random_soft_ns.mean()
    table = method_table(pd.concat(out.values())).set_index("method")
    assert table.loc["reagent", "log_ratio_ns"] > table.loc["attention", "log_ratio_ns"]


def test_float64_model_runs_every_method():
    # invariant: the original's evaluation precision (float64 model) works for every method
    rows = []
    for method in ("reagent", "integrated_gradients", "gradient_shap", "attention_rollout", "norm"):
        out, _ = _run("attribution.sequence", method=method, dtype="float64", max_prompts=1, max_new_tokens=1, **FAST)
        rows += out
    assert len(rows) == 5 and all(math.isfinite(r["soft_nc"]) for r in rows)


def test_method_table_splits_on_varying_settings():
    # invariant: a varying ReAGent setting gets its own lines; seeds are pooled
    df = _fake_rows()
    df = pd.concat([df.assign(replace_ratio=0.1, seed=0), df.assign(replace_ratio=0.3, seed=1)])
    table = method_table(df)
    assert len(table) == 4 and "replace_ratio" in table.columns and "seed" not in table.columns
