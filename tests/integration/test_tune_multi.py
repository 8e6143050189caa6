"""Multi-objective tune stages: the Pareto front to best.parquet, constraints, and `select:` on transfer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.store import load_results

SPEC = """\
    name: pareto
    stages:
      val:
        task: demo.tradeoff
        tune:
          metric: [gain, cost]
          mode: [max, min]
          num_samples: 10
          sampler: {sampler}
          constraints: {constraints}
          space: {{x: {{choice: [0.0, 0.25, 0.5, 0.75, 1.0]}}, y: {{choice: [0.0, 1.0]}}}}
      test:
        transfer: val
        {select}
"""


def run(write_spec, tmp_path: Path, sampler: str = "grid", constraints: str = "[]", select: str = "",
        executor: str = "inline"):
    spec = write_spec(SPEC.format(sampler=sampler, constraints=constraints, select=select))
    results = tmp_path / "r"
    outcomes = run_spec(spec, str(results), executor=executor)
    return outcomes, open_sweep(spec, results)[1].best_rows("val"), load_results(str(results), "pareto", "test")


def test_front_is_the_planted_one_and_front_transfers(write_spec, tmp_path: Path) -> None:
    # Invariant: over the whole grid the front is every y = 0 point (rank 0); each y = 1 point is dominated
    # by the y = 0 point of the same x (rank 1); `select: front` (the default) runs every front point.
    outcomes, best, tested = run(write_spec, tmp_path)
    assert outcomes[0].executed == 10
    ranks = {(json.loads(r["best_params"])["x"], json.loads(r["best_params"])["y"]): r["pareto_rank"] for r in best}
    assert len(ranks) == 10
    assert {p for p, rank in ranks.items() if rank == 0} == {(x, 0.0) for x in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert {p for p, rank in ranks.items() if rank == 1} == {(x, 1.0) for x in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert all(r["value_cost"] == pytest.approx(r["value_gain"] ** 2 + json.loads(r["best_params"])["y"])
               for r in best)
    assert sorted(tested.x) == [0.0, 0.25, 0.5, 0.75, 1.0] and (tested.y == 0.0).all()
    assert set(tested.selected_by) == {"front"}
    front_ids = {r["best_run_id"] for r in best if r["pareto_rank"] == 0}
    assert set(tested.selected_from) == front_ids


@pytest.mark.usefixtures("ray_session")
def test_constraints_filter_and_select_a_metric_on_the_front(write_spec, tmp_path: Path) -> None:
    # Invariant: constraints drop trials before the front is drawn; `select: gain` transfers the front
    # point with the highest gain among those allowed (x = 0.75 under cost <= 0.6), recording the rule.
    _, best, tested = run(write_spec, tmp_path, constraints='["cost <= 0.6"]', select="select: gain",
                                 executor="ray")
    allowed = {(json.loads(r["best_params"])["x"], json.loads(r["best_params"])["y"]) for r in best}
    assert all(x * x + y <= 0.6 for x, y in allowed) and (0.75, 0.0) in allowed and (1.0, 0.0) not in allowed
    assert len(tested) == 1 and tested.x.iloc[0] == 0.75 and tested.y.iloc[0] == 0.0
    assert tested.selected_by.iloc[0] == "front:gain"


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_multi_objective_samplers_find_front_points(write_spec, tmp_path: Path, sampler: str) -> None:
    # Invariant: multi-objective samplers run the search; every rank-0 row is non-dominated among the trials.
    _, best, _ = run(write_spec, tmp_path, sampler=sampler)
    points = [(r["value_gain"], r["value_cost"], r["pareto_rank"]) for r in best]
    for gain, cost, rank in points:
        dominated = any(g >= gain and c <= cost and (g, c) != (gain, cost) for g, c, _ in points)
        assert dominated == (rank > 0)
