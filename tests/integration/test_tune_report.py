"""`report` on tune stages: Optuna's plots from a study rebuilt from the store, and constraint slack."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.report import stage_report
from orchestrator.store import load_results
from orchestrator.tune_report import group_studies, tune_report

SPEC = """\
    name: reported
    stages:
      val:
        task: demo.curve
        params: {y: {grid: [0.3, 0.5]}, steps: 9}
        tune:
          metric: score
          mode: max
          group_by: [y]
          num_samples: 8
          constraints: ["peak <= 0.9"]
          scheduler: {type: asha, grace_period: 1, reduction_factor: 3}
          space: {x: {uniform: [0.0, 1.0]}, steps: {choice: [9, 10]}}
"""
MULTI = """\
    name: reported-multi
    stages:
      val:
        task: demo.tradeoff
        tune:
          metric: [gain, cost]
          mode: [max, min]
          num_samples: 6
          space: {x: {uniform: [0.0, 1.0]}, y: {uniform: [0.0, 1.0]}}
"""


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_report_draws_each_group_and_prints_slack(write_spec, tmp_path: Path) -> None:
    # Invariant: per group, history, importances and parallel-coordinate PNGs are written from the stored
    # trials (pruned ones included with their curves), and the best config's constraint slack is printed.
    spec = write_spec(SPEC)
    results = tmp_path / "r"
    run_spec(spec, str(results), executor="inline")
    plan, store = open_sweep(spec, results)
    studies = group_studies(plan, store, "val")
    rows = load_results(str(results), "reported", "val")
    assert set(studies) == {"y=0.3", "y=0.5"}
    assert sum(len(s.trials) for s in studies.values()) == len(rows) == 16
    assert any(t.intermediate_values for s in studies.values() for t in s.trials)
    items = tune_report(plan, store, "val", tmp_path / "out")
    figures = [i for i in items if isinstance(i, Path)]
    names = sorted(p.name for p in figures)
    for group in ("y=0.3", "y=0.5"):
        for kind in ("history", "importances", "parallel"):
            assert f"tune-{group}-{kind}.png" in names
    assert all(is_png(p) for p in figures)
    shown = [str(item) for item in stage_report(plan, store, "val", tmp_path / "out")]  # as `report` prints
    assert sum("figure written to" in line and "tune-" in line for line in shown) == len(figures)
    (slack,) = [i for i in items if isinstance(i, pd.DataFrame) and "slack(peak <= 0.9)" in i.columns]
    best = {r["group"]: r for r in store.best_rows("val")}
    for row in slack.to_dict("records"):
        chosen = rows[rows.run_id == row["run_id"]].iloc[0]
        assert row["run_id"] == best[row["group"]]["best_run_id"]
        assert row["slack(peak <= 0.9)"] == pytest.approx(0.9 - chosen.peak)


def test_report_draws_the_pareto_front(write_spec, tmp_path: Path) -> None:
    # Invariant: a multi-objective group also gets its Pareto-front plot.
    spec = write_spec(MULTI)
    results = tmp_path / "r"
    run_spec(spec, str(results), executor="inline")
    plan, store = open_sweep(spec, results)
    figures = [i for i in tune_report(plan, store, "val", tmp_path / "out") if isinstance(i, Path)]
    assert {p.name for p in figures} >= {"tune-all-pareto.png", "tune-all-history.png"}
    assert all(is_png(p) for p in figures)
