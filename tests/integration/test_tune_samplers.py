"""Optuna's samplers behind `tune.sampler`: each runs a search, is seeded, and warm-starts on resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.select import Trial
from orchestrator.store import load_results
from orchestrator.tune import new_study

SPEC = """\
    name: samplers
    stages:
      val:
        task: demo.quadratic
        params: {{y: -2.0}}
        tune:
          metric: loss
          mode: min
          num_samples: {n}
          sampler: {sampler}
          space: {space}
"""
NUMERIC = "{x: {uniform: [-3.0, 5.0]}, noise: {uniform: [0.0, 0.5]}}"
DISCRETE = "{x: {choice: [-1.0, 0.0, 1.0, 2.0]}, noise: {quniform: [0.0, 0.5, 0.25]}}"
SAMPLERS = {
    "tpe": NUMERIC, "random": NUMERIC, "cmaes": NUMERIC, "gp": NUMERIC, "qmc": NUMERIC, "nsga2": NUMERIC,
    "grid": DISCRETE, "{type: tpe, n_startup_trials: 2, multivariate: true}": NUMERIC,
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_searches_and_resumes(write_spec, tmp_path: Path, sampler: str) -> None:
    # Invariant: every sampler proposes distinct valid trials, the same ones for the same seed, and a
    # resumed search with a larger budget runs only the missing trials, with the stored ones told first.
    spec = write_spec(SPEC.format(n=4, sampler=sampler, space=SAMPLERS[sampler]))
    results, twin = tmp_path / "r", tmp_path / "twin"
    run_spec(spec, str(results), executor="inline")
    run_spec(spec, str(twin), executor="inline")
    first = load_results(str(results), "samplers", "val")
    assert len(first) == 4 and first.run_id.is_unique and (first.status == "ok").all()
    assert set(first.run_id) == set(load_results(str(twin), "samplers", "val").run_id)  # seeded per group
    (outcome,) = run_spec(spec, str(results), executor="inline", overrides=["stages.val.tune.num_samples=7"])
    assert outcome.executed == 3
    again = load_results(str(results), "samplers", "val")
    assert len(again) == 7 and again.run_id.is_unique and set(first.run_id) < set(again.run_id)
    plan, _ = open_sweep(spec, results)
    stage = plan.stages["val"]
    trials = [Trial(r.run_id, {"x": r.x, "noise": r.noise, "y": r.y}, {"loss": r.loss}) for r in again.itertuples()]
    study = new_study(stage.stage.tune, stage.groups[0], stage.distributions, trials, stage.sampler)
    assert len(study.trials) == 7 and study.best_value == pytest.approx(again.loss.min())
    proposal = study.ask(stage.distributions)  # the warm study goes on proposing in the space
    assert -3.0 <= proposal.params["x"] <= 5.0
