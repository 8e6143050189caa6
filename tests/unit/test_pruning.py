"""The stop rule of a tune stage with a `scheduler` (orchestrator.tune.Pruning), on real Optuna pruners."""

from __future__ import annotations

from orchestrator.tune import Pruning


def stop_steps(rule: Pruning, trials: int, last_step: int) -> list[int]:
    """Run `trials` trials, each worse than the one before at every step; the steps where they were stopped."""
    stopped = []
    for t in range(trials):
        run_id = f"run{t}"
        state, value = "ok", None
        for step in range(1, last_step + 1):
            value = float(t * 10 + 100 - step)  # minimised: later trials are worse
            if rule.should_stop("g", run_id, step, {"loss": value}):
                stopped.append(step)
                state = "pruned"
                break
        rule.finished("g", run_id, state, value if state == "ok" else None)
    return stopped


def test_hyperband_never_stops_a_trial_at_its_full_budget() -> None:
    rule = Pruning("hyperband", {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}, "loss", "min")
    stopped = stop_steps(rule, trials=30, last_step=9)
    assert stopped, "worse and worse trials were never stopped"
    assert max(stopped) < 9, f"trials stopped at their full budget (max_t), where they should finish: {stopped}"


def test_a_step_reported_twice_is_judged_once() -> None:
    rule = Pruning("median", {"n_warmup_steps": 0, "n_startup_trials": 1}, "loss", "min")
    rule.finished("g", "a", "ok", None)
    for step in (1, 2):
        assert not rule.should_stop("g", "best", step, {"loss": 0.0})
    rule.finished("g", "best", "ok", 0.0)
    assert rule.should_stop("g", "worse", 1, {"loss": 5.0})
    assert not rule.should_stop("g", "worse", 1, {"loss": 5.0}), "a retried run's repeated step was judged again"
