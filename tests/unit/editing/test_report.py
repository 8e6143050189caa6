"""Report helpers: heat maps, the ROME bucket aggregation, the selection and transfer tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tasks.editing import report


def test_plot_trace_writes_a_png_and_buckets_find_the_planted_site(planted_trace, planted, tmp_path):
    path = report.plot_trace(pd.DataFrame(planted_trace), tmp_path / "trace.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    average = report.average_trace(pd.DataFrame(planted_trace))
    mlp = average[average.site == "mlp"]
    best = mlp.loc[mlp["indirect_effect"].idxmax()]
    assert best["bucket"] == "last subject" and best["layer"] == planted.layer and best["n_facts"] == 8
    # a fact with no traced cells cannot be drawn: a clear error
    with pytest.raises(ValueError, match="no causal-trace cells"):
        report.plot_trace(pd.DataFrame([{"level": "fact", "traced": False}]), tmp_path / "x.png")


def test_bucket_rule():
    # subject tokens 1..3 of 7: first / middle / last subject, first after, further, last token
    buckets = [report._bucket(t, 1, 4, 7) for t in range(7)]
    assert buckets == ["further", "first subject", "middle subject", "last subject", "first after", "further", "last"]
    assert report._bucket(0, 0, 1, 3) == "last subject"  # a one-token subject is its last subject token


def _agg(**kw):
    return {"level": "aggregate", "status": "ok", "model": "m", "dataset": "country", "method": "full", **kw}


def test_selection_table_val_honours_the_bound_and_breaks_ties_by_lower_lr():
    df = pd.DataFrame([
        _agg(run_id="a", lr=1e-3, success=0.9, success_before=0.1, success_gain=0.8, degradation_general=0.01),
        _agg(run_id="b", lr=1e-4, success=0.5, success_before=0.1, success_gain=0.4, degradation_general=0.0005),
        _agg(run_id="c", lr=1e-5, success=0.5, success_before=0.1, success_gain=0.4, degradation_general=0.0001),
        {"level": "example", "status": "ok", "model": "m", "dataset": "country", "method": "full", "run_id": "a"},
    ])
    free = report.selection_table(df).iloc[0]
    assert free["success"] == 0.9 and free["n_trials"] == 3
    bounded = report.selection_table(df, bound=0.001).iloc[0]
    assert bounded["success"] == 0.5 and bounded["lr"] == 1e-5 and bounded["n_inside"] == 2


def test_selection_table_test_reports_mean_and_stderr_in_points():
    df = pd.DataFrame([
        _agg(run_id=f"t{i}", selected_from="a", seed=i, success=s, success_before=0.1, success_gain=s - 0.1,
             degradation_general=0.0)
        for i, s in enumerate([0.3, 0.5])
    ])
    row = report.selection_table(df).iloc[0]
    assert row["n_seeds"] == 2 and row["success"] == pytest.approx(0.4)
    assert row["gain_points"] == pytest.approx(30.0) and row["gain_stderr"] == pytest.approx(10.0 / math.sqrt(2))


def test_rome_table_means_per_layer():
    df = pd.DataFrame([
        {"level": "aggregate", "model": "m", "edit_layer": 1, "efficacy_score": e, "paraphrase_score": 1.0,
         "neighborhood_score": 1.0, "neighborhood_abs_change": 0.1, "degradation_general": 0.0}
        for e in (0.0, 1.0)
    ] + [{"level": "prompt", "model": "m", "edit_layer": None}])
    table = report.rome_table(df)
    assert len(table) == 1 and table.iloc[0]["efficacy_score"] == 0.5 and table.iloc[0]["n_edits"] == 2


def test_row_columns_never_reuse_parameter_names(planted_trace):
    # the orchestrator refuses a row column named like a parameter with another value
    import numpy as np

    from tasks.editing.ops.evaluation import EvalResult, comparison_rows
    from tasks.editing.task import CausalTraceParams, FinetuneParams

    result = EvalResult(np.zeros((1, 1)), np.zeros(1, bool), np.zeros(1), 1.0, 1.0, 3)
    finetune_columns = {k for row in comparison_rows(result, result, "good") for k in row}
    finetune_columns |= {"epoch_selected", "train_loss_initial", "train_loss_final", "optimizer_steps",
                         "trainable_params", "n_train"}
    assert not finetune_columns & set(FinetuneParams.model_fields)
    trace_columns = {k for row in planted_trace for k in row}
    assert not trace_columns & set(CausalTraceParams.model_fields)
    # (editing.rome: checked on real rows in test_rome.py::test_rome_task_on_a_builtin_fact)


def test_selection_table_success_inside_each_ball():
    df = pd.DataFrame([
        _agg(run_id="a", lr=1e-3, success=0.9, degradation_general=0.02, league=None),
        _agg(run_id="b", lr=1e-4, success=0.5, degradation_general=0.0005, league=None),
    ])
    row = report.selection_table(df, balls=(1e-3, 1e-2, 5e-2)).iloc[0]
    assert (row["success_within_0.001"], row["success_within_0.05"]) == (0.5, 0.9)
    assert math.isnan(row["success_within_0.01"]) is False and row["success_within_0.01"] == 0.5
    assert "league" not in row.index  # a group key that is never set is left out
