"""`tune.sampler`, `tune.scheduler`, multi-objective `metric`/`mode` and `select:` are checked at plan time."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec

BASE = """\
name: s
stages:
  val:
    task: demo.quadratic
    params: {{y: 0.0}}
    tune:
      metric: {metric}
      mode: {mode}
      space: {space}
{extra}
"""
TWO = "{x: {uniform: [-1, 1]}, noise: {uniform: [0, 1]}}"
ONE = "{x: {uniform: [-1, 1]}}"


def plan_of(tmp_path: Path, extra: str = "", space: str = TWO, metric: str = "loss", mode: str = "min",
            stages: str = ""):
    text = BASE.format(metric=metric, mode=mode, space=space, extra=textwrap.indent(extra, "      ")) + stages
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return build_plan(load_spec(path))


CASES = [
    ("sampler: tpz", {}, ["stages.val.tune.sampler", "unknown sampler 'tpz'", "did you mean 'tpe'"]),
    ("sampler: {type: tpe, n_startup: 3}", {}, ["stages.val.tune.sampler.n_startup", "no option 'n_startup'",
                                                "n_startup_trials"]),
    ("sampler: {type: random, seed: 3}", {}, ["stages.val.tune.sampler.seed", "set by the orchestrator"]),
    ("sampler: cmaes", {"space": ONE}, ["stages.val.tune.sampler", "cmaes needs two or more numeric", "got 1 (x)"]),
    ("sampler: qmc", {"space": "{x: {choice: [1, 2]}, noise: {uniform: [0, 1]}}"},
     ["sampler qmc samples numeric dimensions only", "choice dimension(s) x"]),
    ("sampler: grid", {}, ["sampler grid needs a finite space", "x, noise are continuous"]),
    ("sampler: {type: nsga2, population_size: 1}", {}, ["stages.val.tune.sampler", "population_size"]),
    ("sampler: cmaes", {"metric": "[loss, x]", "mode": "[min, max]"}, ["sampler cmaes optimises one metric"]),
    ("scheduler: {type: ashaa}", {}, ["stages.val.tune.scheduler", "unknown scheduler 'ashaa'",
                                       "did you mean 'asha'"]),
    ("scheduler: {type: asha, grace: 1}", {}, ["stages.val.tune.scheduler.grace", "no option 'grace'",
                                                "grace_period"]),
    ("scheduler: {type: asha, reduction_factor: 1}", {}, ["stages.val.tune.scheduler", "scheduler asha:"]),
    ("scheduler: {type: median, n_warmup_steps: -1}", {}, ["stages.val.tune.scheduler", "scheduler median:"]),
    ("scheduler: asha", {"metric": "[loss, x]", "mode": "[min, max]"}, ["one reported metric"]),
    ("", {"metric": "[loss, x]", "mode": "min"}, ["one mode per metric"]),
    ("", {"metric": "[loss, loss]", "mode": "[min, min]"}, ["names a metric twice"]),
]


@pytest.mark.parametrize(("extra", "kwargs", "parts"), CASES, ids=[c[0] or c[1].get("metric", "") for c in CASES])
def test_tune_options_are_checked_at_plan_time(tmp_path: Path, extra: str, kwargs: dict, parts: list[str]) -> None:
    # Invariant: a bad sampler, scheduler or objective list fails `plan` with the key path and the reason.
    with pytest.raises(SpecError) as caught:
        plan_of(tmp_path, extra, **kwargs)
    text = str(caught.value)
    assert "spec.yaml" in text
    for part in parts:
        assert part in text


def test_good_options_plan(tmp_path: Path) -> None:
    # Invariant: valid options are parsed into the plan (Ray Tune names translated to Optuna's).
    plan = plan_of(tmp_path, "sampler: {type: cmaes, popsize: 6}\nscheduler: {type: hyperband, grace_period: 2, "
                             "max_t: 27}")
    stage = plan.stages["val"]
    assert stage.sampler == ("cmaes", {"popsize": 6})
    assert stage.scheduler == ("hyperband", {"min_resource": 2, "max_resource": 27})


TRANSFER = """\
  test:
    transfer: val
    select: {select}
"""


@pytest.mark.parametrize(("metric", "mode", "select", "message"), [
    ("loss", "min", "front", "tunes one metric (loss): there is no front"),
    ("[loss, x]", "[min, max]", "accuracy", "select 'accuracy' is neither `front` nor a metric"),
])
def test_select_is_checked(tmp_path: Path, metric: str, mode: str, select: str, message: str) -> None:
    # Invariant: `select:` must name `front` or a metric of a multi-objective tune stage.
    with pytest.raises(SpecError, match=r"stages\.test\.select") as caught:
        plan_of(tmp_path, metric=metric, mode=mode, stages=TRANSFER.format(select=select))
    assert message in str(caught.value)
