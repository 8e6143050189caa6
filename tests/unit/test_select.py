"""Selection rule: metric, mode, constraints and tie-breaks on hand-built trials."""

from __future__ import annotations

import math

import pytest

from orchestrator.select import Trial, parse_constraint, select_best


def trial(run_id: str, lr: float, success: float, degradation: float) -> Trial:
    return Trial(run_id, {"lr": lr}, {"success": success, "degradation": degradation})


TRIALS = [
    trial("a", 1e-3, 0.9, 0.01),   # best success, but degrades too much
    trial("b", 1e-4, 0.7, 0.0005),
    trial("c", 1e-5, 0.7, 0.0001),  # ties with b on success
    trial("d", 1e-6, 0.2, 0.0),
]


def test_constraint_excludes_the_unconstrained_best() -> None:
    best, feasible = select_best(TRIALS, "success", "max", [parse_constraint("degradation <= 0.001")])
    assert feasible == 3 and best is not None and best.run_id in {"b", "c"}
    assert select_best(TRIALS, "success", "max", [])[0].run_id == "a"


def test_ties_break_on_params_not_on_order() -> None:
    constraint = [parse_constraint("degradation <= 0.001")]
    forward = select_best(TRIALS, "success", "max", constraint)[0]
    backward = select_best(list(reversed(TRIALS)), "success", "max", constraint)[0]
    assert forward == backward and forward.run_id == "b"  # '{"lr":0.0001}' sorts before '{"lr":1e-05}'


def test_min_mode_nan_and_infeasible() -> None:
    trials = [*TRIALS, Trial("e", {"lr": 1.0}, {"success": math.nan, "degradation": 0.0})]
    assert select_best(trials, "success", "min", [])[0].run_id == "d"
    assert select_best(trials, "success", "max", [parse_constraint("degradation < 0")]) == (None, 0)


@pytest.mark.parametrize("text", ["degradation <= ", "x ~ 3", "<= 3", "loss <= abc"])
def test_bad_constraints_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="constraint"):
        parse_constraint(text)
