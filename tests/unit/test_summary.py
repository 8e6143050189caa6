"""The report of any stage: final steps, index columns, seeds aggregated, figures, mixed-feasibility tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.report import stage_report
from orchestrator.summary import stage_runs, step_figure, summary_figure, summary_frame


def long_rows() -> pd.DataFrame:
    """Runs of lr x seed; each returns 3 per-step rows with 2 prompts each (step and prompt_index vary)."""
    rows = []
    for lr in (0.1, 1.0):
        for seed in (0, 1, 2):
            run_id = f"{lr}-{seed}"
            for step in (0, 1, 2):
                for prompt_index in (0, 1):
                    loss = 10.0 - step * lr + seed * 0.1 + prompt_index  # final step: 10 - 2 lr + 0.1 seed + p
                    rows.append({"run_id": run_id, "status": "ok", "lr": lr, "seed": seed, "epochs": 3,
                                 "step": step, "prompt_index": prompt_index, "loss": loss, "n_tokens": 7})
    rows.append({"run_id": "failed", "status": "task_error", "lr": 5.0, "seed": 0, "epochs": 3})
    return pd.DataFrame(rows)


def test_final_step_index_columns_and_seed_aggregation() -> None:
    # The reported case: `step` was averaged (to 225), loss averaged over training, prompt_index averaged,
    # and seeds listed instead of aggregated.
    stage = stage_runs(long_rows(), ["lr", "seed", "epochs"])
    assert stage is not None
    assert stage.swept == ["lr", "seed"] and stage.indexes == ["prompt_index"]
    assert set(stage.metrics) == {"loss", "n_tokens"} and len(stage.runs) == 6
    table = summary_frame(stage).set_index("lr")
    # final step, mean over the two prompts (+0.5), mean over seeds 0..2 (+0.1), std over seeds 0.1
    assert table.loc[0.1, "loss"] == f"{10 - 0.2 + 0.5 + 0.1:.4g} ± 0.1"
    assert table.loc[1.0, "loss"] == f"{10 - 2.0 + 0.5 + 0.1:.4g} ± 0.1"
    assert table.loc[1.0, "n_tokens"] == "7 ± 0" and table.loc[1.0, "runs"] == 3
    assert "step" not in table.columns and "prompt_index" not in table.columns and "seed" not in table.columns


def test_one_run_per_config_shows_a_plain_mean() -> None:
    df = long_rows()
    stage = stage_runs(df[df.seed == 0], ["lr", "seed", "epochs"])
    assert stage is not None and stage.swept == ["lr"]
    assert summary_frame(stage).set_index("lr").loc[0.1, "loss"] == f"{10 - 0.2 + 0.5:.4g}"


def test_figures_are_written(tmp_path: Path) -> None:
    stage = stage_runs(long_rows(), ["lr", "seed", "epochs"])
    assert stage is not None
    summary = summary_figure(stage, tmp_path / "summary.png")
    steps = step_figure(stage, tmp_path / "steps.png")
    for path in (summary, steps):
        assert path is not None and path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


def test_the_report_of_a_tune_stage_with_an_infeasible_group(write_spec, tmp_path: Path) -> None:
    # The reported crash: one group with no feasible trial among feasible ones
    # (TypeError: the JSON object must be str, bytes or bytearray, not float).
    spec = write_spec("""\
        name: mixed
        stages:
          val:
            task: demo.quadratic
            params: {y: {grid: [-2.0, 5.0]}}
            tune:
              metric: loss
              mode: min
              group_by: [y]
              num_samples: 3
              constraints: ["loss <= 10"]
              space: {x: {uniform: [0.0, 2.0]}}
    """)
    run_spec(spec, tmp_path / "r", executor="inline")
    sweep, store = open_sweep(spec, tmp_path / "r")
    assert sorted(row["feasible"] for row in store.best_rows("val")) == [False, True]
    items = stage_report(sweep, store, "val", tmp_path / "report")
    tables = [item for item in items if hasattr(item, "columns")]
    chosen = [cell for table in tables for column in table.columns if column.header == "chosen"
              for cell in column._cells]
    assert len(chosen) == 2 and "-" in chosen and any(c.startswith("x=") for c in chosen)
    assert json.loads(next(r for r in store.best_rows("val") if r["feasible"])["best_params"])["y"] == -2.0


@pytest.mark.parametrize("status", ["ok", "task_error"])
def test_nothing_numeric_or_nothing_ok_gives_no_summary(status: str) -> None:
    df = pd.DataFrame([{"run_id": "a", "status": status, "x": 1, "label": "text"}])
    assert stage_runs(df, ["x"]) is None


def test_a_repeating_integer_metric_is_averaged_not_taken_for_an_index() -> None:
    # `correct` (0/1 per prompt) varies within a run but repeats: it is a metric (accuracy), `item` indexes.
    rows = [{"run_id": f"r{seed}", "status": "ok", "seed": seed, "item": i, "correct": int(i < 2 + seed)}
            for seed in (0, 1) for i in range(4)]
    stage = stage_runs(pd.DataFrame(rows), ["seed"])
    assert stage is not None and stage.indexes == ["item"] and stage.metrics == ["correct"]
    assert summary_frame(stage).loc[0, "correct"] == f"{0.625:.4g} ± {0.1767767:.2g}"


def test_the_report_draws_the_curves_runs_reported(write_spec, tmp_path: Path) -> None:
    # ctx.report rows (the store's step table) become step curves; the summary is of the result rows.
    spec = write_spec("""\
        name: curves
        stages:
          s:
            task: demo.curve
            params: {x: {grid: [0.2, 0.7]}, y: 0.3, steps: 5}
    """)
    run_spec(spec, tmp_path / "r", executor="inline")
    sweep, store = open_sweep(spec, tmp_path / "r")
    assert store.step_rows("s").num_rows == 10
    items = [str(item) for item in stage_report(sweep, store, "s", tmp_path / "report")]
    assert any("steps.png" in item for item in items) and any("summary.png" in item for item in items)
    assert (tmp_path / "report" / "s" / "steps.png").stat().st_size > 5000
