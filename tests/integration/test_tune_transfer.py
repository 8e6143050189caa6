"""Val search with real Ray Tune + Optuna, constraint-aware selection, and transfer to test."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.store import load_results

pytestmark = pytest.mark.usefixtures("ray_session")

SPEC = """\
    name: tuned
    stages:
      val:
        task: demo.quadratic
        params: {{y: {{grid: [-2.0, 0.0]}}, noise: 0.0, seed: 0}}
        tune:
          metric: loss
          mode: min
          group_by: [y]
          num_samples: 6
          constraints: {constraints}
          space: {{x: {{uniform: [-3.0, 5.0]}}}}
      test:
        transfer: val
        params: {{noise: 0.1, seed: {{range: [1, 3]}}}}
"""


def test_val_best_test_flow_and_resume(write_spec, tmp_path: Path) -> None:
    # Invariant: one Optuna experiment per group; every trial is a stored row; the best config per group
    # goes to best.parquet and runs on "test" params; a re-run executes nothing new.
    spec = write_spec(SPEC.format(constraints="[]"))
    results = tmp_path / "r"
    run_spec(spec, str(results))
    trials = load_results(str(results), "tuned", "val")
    assert len(trials) == 12 and trials.groupby("y").size().to_dict() == {-2.0: 6, 0.0: 6}
    best = {row["group"]: row for row in open_sweep(spec, results)[1].best_rows("val")}
    for y in (-2.0, 0.0):
        group = trials[trials.y == y]
        chosen = best[f"y={y}"]
        assert chosen["best_value"] == pytest.approx(group.loss.min())
        assert chosen["best_run_id"] == group.loc[group.loss.idxmin(), "run_id"]
    tested = load_results(str(results), "tuned", "test")
    assert len(tested) == 4 and set(tested.seed) == {1, 2} and (tested.noise == 0.1).all()
    assert set(tested.selected_from) == {row["best_run_id"] for row in best.values()}
    for _, row in tested.iterrows():
        origin = trials.set_index("run_id").loc[row.selected_from]
        assert (row.x, row.y) == (origin.x, origin.y)
    again = run_spec(spec, str(results))
    assert [o.executed for o in again] == [0, 0]
    assert len(load_results(str(results), "tuned", "val")) == 12


def test_selection_honours_constraints(write_spec, tmp_path: Path) -> None:
    # Invariant: the chosen trial satisfies the constraint even when a better unconstrained one exists.
    spec = write_spec(SPEC.format(constraints='["loss >= 2.0"]'))
    results = tmp_path / "r"
    run_spec(spec, str(results))
    trials = load_results(str(results), "tuned", "val")
    bound = []
    for row in open_sweep(spec, results)[1].best_rows("val"):
        group = trials[trials.y == float(row["group"].split("=")[1])]
        allowed = group[group.loss >= 2.0]
        if allowed.empty:
            assert not row["feasible"]
            continue
        assert row["best_value"] >= 2.0 and row["best_value"] == pytest.approx(allowed.loss.min())
        bound.append(group.loss.min() < row["best_value"])
    assert any(bound)  # in some group a better, constraint-violating trial existed and was passed over


def test_relative_results_root_reaches_tune_trials(write_spec, tmp_path: Path, monkeypatch) -> None:
    # Invariant: with a relative results root (the CLI default), rows written by Tune trials in other
    # working directories land in the same store as the driver's.
    monkeypatch.chdir(tmp_path)
    spec = write_spec(SPEC.format(constraints="[]").replace("num_samples: 6", "num_samples: 2"))
    run_spec(spec, "results")
    assert len(load_results(str(tmp_path / "results"), "tuned", "val")) == 4
    assert len(load_results(str(tmp_path / "results"), "tuned", "test")) == 4
