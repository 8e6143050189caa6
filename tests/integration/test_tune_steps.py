"""Intermediate reports (`ctx.report`) and early stopping (`tune.scheduler`), on both executors."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.status import summarize
from orchestrator.store import load_results, load_steps

pytestmark = pytest.mark.usefixtures("ray_session")

GRID = """\
    name: curves
    stages:
      train:
        task: demo.curve
        params: {x: {grid: [0.1, 0.7, 0.9]}, y: 0.3, steps: 5}
"""

TUNE = """\
    name: curves
    stages:
      val:
        task: demo.curve
        params: {{steps: 27}}
        tune:
          metric: score
          mode: max
          num_samples: {n}
          max_concurrent: 1
          scheduler: {scheduler}
          space: {{x: {{uniform: [0.0, 1.0]}}, y: {{uniform: [0.0, 1.0]}}}}
"""


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_reports_are_step_rows_apart_from_results(write_spec, tmp_path: Path, executor: str) -> None:
    # Invariant: every ctx.report is one stored step row (run_id, attempt, step, metrics); the result rows,
    # the done-runs logic and status see only the return values; a re-run executes nothing.
    spec = write_spec(GRID)
    results = tmp_path / "r"
    run_spec(spec, str(results), executor=executor)
    rows = load_results(str(results), "curves", "train")
    steps = load_steps(str(results), "curves", "train")
    assert len(rows) == 3 and (rows.status == "ok").all() and "step" not in rows.columns
    assert len(steps) == 15 and set(steps.run_id) == set(rows.run_id) and (steps.attempt == 1).all()
    for run_id, curve in steps.groupby("run_id"):
        assert sorted(curve.step) == [1, 2, 3, 4, 5]
        final = rows.set_index("run_id").loc[run_id, "score"]
        assert curve.set_index("step").loc[5, "score"] == pytest.approx(final)
        assert curve.sort_values("step").score.is_monotonic_increasing
    assert str(steps.reported_at.dtype).startswith("datetime64")
    plan, store = open_sweep(spec, results)
    (summary,) = summarize(plan, store)
    assert (summary.ok, summary.failed, summary.to_run, summary.stored_not_in_spec) == (3, 0, 0, 0)
    assert [o.executed for o in run_spec(spec, str(results), executor=executor)] == [0]
    assert len(load_steps(str(results), "curves", "train")) == 15


def test_a_killed_run_keeps_its_curve(write_spec, tmp_path: Path) -> None:
    # Invariant: steps are stored as they are reported: a worker that dies at step 4 leaves steps 1-3.
    spec = write_spec("""\
        name: dies
        stages:
          train:
            task: demo.curve
            params: {x: 0.7, steps: 6, die_at_step: 4, step_seconds: 0.05}
            retries: {system: 0}
    """)
    results = tmp_path / "r"
    run_spec(spec, str(results))
    rows = load_results(str(results), "dies", "train")
    assert list(rows.status) == ["worker_died"]
    steps = load_steps(str(results), "dies", "train")
    assert sorted(steps.step) == [1, 2, 3] and set(steps.run_id) == set(rows.run_id)


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_asha_prunes_and_resume_never_reruns(write_spec, tmp_path: Path, executor: str) -> None:
    # Invariant: ASHA stops hopeless trials at a rung: status pruned, their steps kept up to the stop; the
    # best config is a finished trial; a re-run executes nothing, and a larger budget runs only the new
    # samples (a pruned trial counts as one and is never re-run).
    asha = "{type: asha, grace_period: 1, reduction_factor: 3}"
    spec = write_spec(TUNE.format(n=20, scheduler=asha))
    results = tmp_path / "r"
    (outcome,) = run_spec(spec, str(results), executor=executor)
    rows = load_results(str(results), "curves", "val")
    steps = load_steps(str(results), "curves", "val")
    assert outcome.executed == 20 and outcome.pruned == (rows.status == "pruned").sum() >= 10
    assert set(rows.status) == {"ok", "pruned"}
    last = steps.groupby("run_id").step.max()
    pruned = rows[rows.status == "pruned"].run_id
    finished = rows[rows.status == "ok"].run_id
    assert (last[pruned] < 27).all() and (last[finished] == 27).all()
    assert set(last[pruned]) <= {1, 3, 9}  # ASHA's rungs with grace period 1 and reduction factor 3
    (best,) = open_sweep(spec, results)[1].best_rows("val")
    assert best["best_run_id"] in set(finished)
    assert best["best_value"] == pytest.approx(rows[rows.status == "ok"].score.max())
    plan, store = open_sweep(spec, results)
    (summary,) = summarize(plan, store)
    assert (summary.ok + summary.pruned, summary.failed, summary.to_run) == (20, 0, 0)
    assert [o.executed for o in run_spec(spec, str(results), executor=executor)] == [0]
    assert [o.executed for o in run_spec(spec, str(results), executor=executor,
                                         overrides=["stages.val.tune.num_samples=24"])] == [4]
    again = load_results(str(results), "curves", "val")
    assert len(again) == 24 and set(rows.run_id) <= set(again.run_id)
    assert (again.set_index("run_id").loc[list(pruned), "status"] == "pruned").all()


@pytest.mark.parametrize("scheduler", [
    "{type: median, n_startup_trials: 3, grace_period: 2}",
    "{type: hyperband, grace_period: 1, max_t: 27, reduction_factor: 3}",
])
def test_median_and_hyperband_stop_trials(write_spec, tmp_path: Path, scheduler: str) -> None:
    # Invariant: each scheduler type stops some trials on the reported metric and finishes others.
    spec = write_spec(TUNE.format(n=14, scheduler=scheduler))
    results = tmp_path / "r"
    (outcome,) = run_spec(spec, str(results), executor="inline")
    assert outcome.pruned > 0 and outcome.ok > 0 and outcome.ok + outcome.pruned == 14
    steps = load_steps(str(results), "curves", "val")
    rows = load_results(str(results), "curves", "val")
    assert (steps.groupby("run_id").step.max()[rows[rows.status == "pruned"].run_id] < 27).all()


class Recorder:
    """A progress sink that keeps every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None:
        self.calls.append(("started", total, already_done, to_run))

    def advance(self, stage: str, ok: int, failed: int, pruned: int = 0) -> None:
        self.calls.append(("advance", ok, failed, pruned))

    def stage_finished(self, stage: str) -> None:
        self.calls.append(("finished",))

    def note(self, text: str) -> None:
        pass


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_progress_counts_each_trial_as_it_lands(write_spec, tmp_path: Path, executor: str) -> None:
    # Invariant: a tune stage's progress advances once per stored trial (ok / failed / pruned), between
    # its start and its end, adding up to the trials run; the CLI bar shows the pruned count.
    from orchestrator.cli import RichProgress

    spec = write_spec(TUNE.format(n=12, scheduler="{type: asha, grace_period: 1, reduction_factor: 3}"))
    recorder = Recorder()
    (outcome,) = run_spec(spec, str(tmp_path / "r"), executor=executor, progress=recorder)
    assert recorder.calls[0] == ("started", 12, 0, 12) and recorder.calls[-1] == ("finished",)
    steps = recorder.calls[1:-1]
    assert len(steps) == 12 and all(call[0] == "advance" and sum(call[1:]) == 1 for call in steps)
    assert sum(call[3] for call in steps) == outcome.pruned > 0
    bar = RichProgress()
    bar.stage_started("val", 12, 0, 12)
    for call in steps:
        bar.advance("val", *call[1:])
    task = bar.progress.tasks[0]
    assert task.completed == 12 and task.fields["pruned"] == outcome.pruned and task.fields["failed"] == 0
    bar.close()
