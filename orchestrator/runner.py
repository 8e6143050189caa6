"""`run` and `retry`: drive every stage of a plan through an executor into the store.

Resume is by content: a run whose id already has a stored row is never executed again; `retry`
re-executes only runs whose latest attempt failed. Grid runs, tune trials and transferred runs take
the same path: a work source -> the executor (Ray or inline) -> `on_result` -> the row writer.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator import logfile
from orchestrator.context import Upstream
from orchestrator.errors import SpecError, StoreError
from orchestrator.execute import ListSource, OnResult, RunPayload, RunResult, StageExecution, WorkItem, WorkSource
from orchestrator.plan import StagePlan, SweepPlan
from orchestrator.provenance import code_state, package_versions
from orchestrator.runs import Run
from orchestrator.schema import BAD_OUTPUT, FAILED, MISSING_UPSTREAM, OK, PRUNED, ColumnKinds, is_final, result_rows
from orchestrator.select import Trial
from orchestrator.steps import StepChannel, StopRule
from orchestrator.store import ResultStore, RowWriter, RunState, SweepLock
from orchestrator.tracking import Tracking, TrackingOptions, step_row
from orchestrator.tune import (
    GroupSearch,
    Known,
    Pruning,
    TrialSource,
    best_rows,
    curves,
    new_study,
    stored_trials,
    trial_values,
)


class Executor(Protocol):
    name: str

    def slots(self, resources: Any) -> int: ...

    def step_channel(self, rule: StopRule | None) -> StepChannel: ...

    def run(self, stage: StageExecution, source: WorkSource, on_result: OnResult,
            on_tick: Callable[[], None] | None = None) -> int: ...


class ProgressSink(Protocol):
    def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None: ...
    def advance(self, stage: str, ok: int, failed: int, pruned: int = 0) -> None: ...
    def stage_finished(self, stage: str) -> None: ...
    def note(self, text: str) -> None: ...


class NullProgress:
    def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None:
        pass

    def advance(self, stage: str, ok: int, failed: int, pruned: int = 0) -> None:
        pass

    def stage_finished(self, stage: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class RunOptions:
    retry: bool = False
    flush_rows: int = 5000
    flush_s: float = 2.0
    stages: list[str] | None = None  # only these stages (default: all)
    force: bool = False  # write into a stage that holds another task's results
    tracking: TrackingOptions | None = None  # mirror each stored run into these trackers (driver side)


@dataclass
class StageOutcome:
    name: str
    executed: int = 0
    ok: int = 0
    failed: int = 0
    pruned: int = 0
    setup_loads: int = 0
    wall_s: float = 0.0
    failures: list[RunResult] = field(default_factory=list)


# ---------------------------------------------------------------- runs known now


def trial_runs(stage: StagePlan, trials: list[Trial]) -> list[Run]:
    """The stored trials of a tune stage that belong to today's groups, as runs."""
    runs: dict[str, Run] = {}
    for trial in trials:
        if any(group.contains(trial.params) for group in stage.groups):
            try:
                run = stage.make_run(trial.params)
            except SpecError:  # stored under an older version of the task's params
                continue
            if run.run_id == trial.run_id:
                runs[run.run_id] = run
    return list(runs.values())


def known_runs(plan: SweepPlan, store: ResultStore, name: str,
               resolved: dict[str, list[Run] | None]) -> list[Run] | None:
    """The runs of stage `name` as far as they can be known now (None: not until upstream runs exist)."""
    stage = plan.stages[name]
    if stage.kind == "tune":
        return trial_runs(stage, stored_trials(store, stage.name, list(stage.task.params.model_fields)))
    if stage.kind == "transfer":
        best = store.best_rows(stage.stage.transfer)  # type: ignore[arg-type]
        return stage.transfer_runs(best) if best else None
    if not stage.linked:
        upstream = {need: resolved.get(need) for need in stage.needs}
        if any(runs is None for runs in upstream.values()):
            return None
        stage.link(upstream)  # type: ignore[arg-type]
    return list(stage.runs.values())


# ---------------------------------------------------------------- one stage


class StageRun:
    """Executes one stage's work and stores every result: the single path of every run."""

    def __init__(self, plan: SweepPlan, store: ResultStore, stage: StagePlan, options: RunOptions,
                 progress: ProgressSink, resolved: dict[str, list[Run] | None], scratch: Path,
                 tracking: Tracking | None = None) -> None:
        self.plan, self.store, self.stage, self.options, self.progress = plan, store, stage, options, progress
        self.resolved, self.scratch, self.tracking = resolved, scratch, tracking
        self.states = store.run_states(stage.name)
        self.kinds = ColumnKinds(store.column_kinds(stage.name))
        self.outcome = StageOutcome(stage.name)
        self.writer = RowWriter(store, stage.name, options.flush_rows, options.flush_s,
                                on_flush=self.track if tracking is not None else None)
        self.step_writer = RowWriter(store, stage.name, options.flush_rows, options.flush_s, steps=True,
                                     on_flush=self.track_steps if tracking is not None else None)
        self.writer.before_flush = self.step_writer.flush  # a run's reports are stored before its result rows
        self.channel: StepChannel | None = None
        self.reported = 0  # ctx.report calls of this command's runs
        self.runs: dict[str, Run] = {}
        self.upstream_states = {need: store.run_states(need) for need in stage.needs}
        self.upstream_runs = {need: {r.run_id: r for r in resolved.get(need) or []} for need in stage.needs}
        self.memory = int(stage.resources.memory) if stage.resources.memory else None
        self.trials: TrialSource | None = None

    def todo(self, runs: list[Run]) -> list[Run]:
        """Runs never stored, or (with `retry`) whose latest attempt failed."""
        return [r for r in runs if r.run_id not in self.states
                or (self.options.retry and not is_final(self.states[r.run_id].status))]

    def attempt(self, run: Run) -> int:
        state = self.states.get(run.run_id)
        return 1 if state is None else state.attempt + 1

    def item(self, run: Run) -> WorkItem:
        self.runs[run.run_id] = run
        payload = RunPayload(run.run_id, run.target, run.params, run.seed, self.attempt(run),
                             self.store.artifact_root(), self.upstream_of(run), self.memory,
                             self.stage.stage.timeout_s,
                             steps=self.channel.worker_handle if self.channel is not None else None)
        return WorkItem(payload, self.stage.task.setup_key(run.params, run.upstream))

    def open_steps(self, executor: Executor, rule: StopRule | None = None) -> None:
        """The stage's step broker (ctx.report), before any work item is made."""
        self.channel = executor.step_channel(rule)
        broker = getattr(self.channel, "broker", None)
        if broker is not None:  # inline: reports arrive in this process; store them as they come
            broker.listener = self.tick

    def drain_steps(self, wait: bool = False) -> None:
        if self.channel is None:
            return
        rows = self.channel.drain(wait)
        if rows:
            if self.trials is not None:
                self.trials.observe(rows)
            self.step_writer.add(rows)

    def tick(self) -> None:
        self.drain_steps()
        self.writer.tick()
        self.step_writer.tick()

    def upstream_of(self, run: Run) -> dict[str, list[Upstream]]:
        links: dict[str, list[Upstream]] = {}
        for need, ids in run.upstream.items():
            links[need] = []
            for run_id in ids:
                local = self.store.local_artifact_dir(run_id)
                if local is None:
                    try:
                        local = self.store.fetch_artifacts(run_id, self.scratch)
                    except OSError:
                        local = self.scratch / run_id  # absent: the run reports missing upstream artifacts
                links[need].append(Upstream(need, run_id, self.upstream_runs[need][run_id].params, local))
        return links

    def missing_upstream(self, run: Run) -> str | None:
        """Why `run` cannot run yet: an upstream run it reads is not stored as ok."""
        for need, ids in run.upstream.items():
            for run_id in ids:
                state: RunState | None = self.upstream_states[need].get(run_id)
                if state is None or state.status != OK:
                    status = "not stored" if state is None else f"{state.status} (attempt {state.attempt})"
                    return f"upstream run {run_id} of stage '{need}' is {status}"
        return None

    def on_result(self, item: WorkItem, result: RunResult) -> None:
        run = self.runs.pop(item.payload.run_id)
        if result.warnings:
            logfile.run_warnings(run.run_id, result.warnings)
        rows = result_rows(run, result, code_state(run.target), package_versions())
        problem = self.kinds.problem(rows)
        if problem is not None:  # a value Parquet cannot hold beside the stage's other rows: a failure row
            result.status, result.error_type, result.error, result.rows = FAILED, BAD_OUTPUT, problem, []
            rows = result_rows(run, result, code_state(run.target), package_versions())
            if self.kinds.problem(rows) is not None:
                raise StoreError(f"{self.store.stage_dir(self.stage.name)}: cannot store run {run.run_id}: "
                                 f"{self.kinds.problem(rows)}")
        self.kinds.accept(rows)
        if result.artifact_dir:  # before the rows: a stored row's artifacts are always in place
            self.store.publish_artifacts(run.run_id, Path(result.artifact_dir))
            shutil.rmtree(result.artifact_dir, ignore_errors=True)
        if self.tracking is not None and result.steps_reported:
            self.drain_steps(wait=True)  # its curve reaches the trackers before (with) its result
        self.writer.add(rows)
        self.reported += result.steps_reported
        if self.trials is not None:
            if result.status == PRUNED and run.run_id not in self.trials.last_step:
                self.drain_steps(wait=True)  # its last reported value, for the sampler
            known = self.trials.finished(run.run_id, result)
            group = self.trials.groups.pop(run.run_id, None)
            if self.channel is not None and group is not None:
                state = OK if result.status == OK else PRUNED if result.status == PRUNED else FAILED
                self.channel.finished(group, run.run_id, state, known.values[0])
        self.outcome.executed += 1
        if result.status == OK:
            self.outcome.ok += 1
            self.progress.advance(self.stage.name, 1, 0)
        elif result.status == PRUNED:
            self.outcome.pruned += 1
            self.progress.advance(self.stage.name, 0, 0, 1)
        else:
            self.outcome.failed += 1
            self.outcome.failures.append(result)
            self.progress.advance(self.stage.name, 0, 1)

    def track(self, rows: list[dict[str, Any]]) -> None:
        """Mirror rows just stored into the trackers (a tracker's failure is a warning, never lost rows)."""
        assert self.tracking is not None
        self.tracking.log_rows(rows, self.stage.task.params.model_fields, self.store.local_artifact_dir)

    def track_steps(self, rows: list[dict[str, Any]]) -> None:
        """Mirror step rows just stored (`ctx.report`): they join their run's tracked run."""
        self.track([step_row(row, self.store.sweep, self.stage.name) for row in rows])

    def execute(self, executor: Executor, source: WorkSource) -> None:
        start = time.perf_counter()
        try:
            self.outcome.setup_loads = executor.run(self.stage.execution, source, self.on_result, self.tick)
            if self.reported or self.outcome.failed:  # a run killed mid-way reported, but could not say so
                self.drain_steps(wait=True)
        finally:
            self.writer.flush()  # the step rows first (before_flush), then the result rows
            self.step_writer.flush()
            if self.tracking is not None:
                self.tracking.log_pending()
            if self.channel is not None:
                self.channel.close()
        self.outcome.wall_s = time.perf_counter() - start

    def runnable(self, runs: list[Run]) -> list[WorkItem]:
        """Work items for `runs`; a run whose upstream is not ok is stored as `missing_upstream` instead."""
        items = []
        for run in runs:
            reason = self.missing_upstream(run)
            if reason is None:
                items.append(self.item(run))
                continue
            self.runs[run.run_id] = run
            item = WorkItem(RunPayload(run.run_id, run.target, run.params, run.seed, self.attempt(run), None))
            self.on_result(item, RunResult(run.run_id, FAILED, [], time.time(), 0.0, "", None, item.payload.attempt,
                                           error_type=MISSING_UPSTREAM, error=reason))
        return items


# ---------------------------------------------------------------- the sweep


def run_sweep(plan: SweepPlan, store: ResultStore, connect: Callable[[], Executor],
              options: RunOptions | None = None, progress: ProgressSink | None = None) -> list[StageOutcome]:
    """Run (or with `options.retry`, retry the failed runs of) every stage, in dependency order.

    `connect` returns the executor (attaching to Ray for the Ray executor); it is called only once some
    stage has work, so re-running a finished sweep starts no cluster. Holds the sweep's lock throughout.
    """
    options = options or RunOptions()
    progress = progress or NullProgress()
    selected = [s for s in plan.order if options.stages is None or s in options.stages]
    executor: Executor | None = None

    def ensure_executor() -> Executor:
        nonlocal executor
        if executor is None:
            executor = connect()
        return executor

    resolved: dict[str, list[Run] | None] = {}
    outcomes = []
    scratch = store.scratch_dir()
    tracking = None
    track = TrackingOptions.merged(plan.loaded.spec.tracking, options.tracking)  # the spec's block + --track
    if track.backends:
        tracking = Tracking(track, plan.name, store.tracking_dir(), warn=progress.note)
    try:
        with SweepLock(store):
            store.quarantine = True  # unreadable parts are moved aside only by the driver holding the lock
            store.remove_stale_temporaries()
            for name in plan.order:
                if name in selected:
                    stage = plan.stages[name]
                    _refuse_foreign_results(store, stage, options.force)
                    runner = StageRun(plan, store, stage, options, progress, resolved, scratch, tracking)
                    if stage.kind == "tune":
                        resolved[name] = _run_tune(runner, ensure_executor)
                    else:  # running a stage stores its runs; it does not change which runs it has
                        resolved[name] = known_runs(plan, store, name, resolved)
                        _run_runs(runner, resolved[name], ensure_executor)
                    outcomes.append(runner.outcome)
                else:
                    resolved[name] = known_runs(plan, store, name, resolved)
    finally:
        store.quarantine = False
        shutil.rmtree(scratch, ignore_errors=True)
        if tracking is not None:
            tracking.close()
    return outcomes


def _refuse_foreign_results(store: ResultStore, stage: StagePlan, force: bool) -> None:
    """A stage holding another task's rows means another spec writes into this sweep name: refuse."""
    others = store.stage_tasks(stage.name) - {stage.task.name}
    if others and not force:
        raise StoreError(
            f"{store.stage_dir(stage.name)}: stage '{stage.name}' holds results of task {', '.join(sorted(others))}, "
            f"but this spec runs {stage.task.name} there: another spec writes into sweep '{store.sweep}'. Give "
            "this spec its own `name:`, or pass --force to add its rows beside them"
        )


def _run_runs(runner: StageRun, runs: list[Run] | None, ensure_executor: Callable[[], Executor]) -> None:
    stage = runner.stage
    if runs is None:
        source = stage.stage.transfer or ", ".join(stage.needs)
        raise SpecError(f"stage '{stage.name}' reads stage '{source}', which has no results yet",
                        file=stage.loaded.source.file, key=f"stages.{stage.name}")
    todo = runner.todo(runs)
    runner.progress.stage_started(stage.name, len(runs), len(runs) - len(todo), len(todo))
    if todo:
        executor = None
        if any(runner.missing_upstream(run) is None for run in todo):
            executor = ensure_executor()
            runner.open_steps(executor)
        items = runner.runnable(todo)
        if items:
            assert executor is not None
            runner.execute(executor, ListSource(items))
    runner.progress.stage_finished(stage.name)


def _run_tune(runner: StageRun, ensure_executor: Callable[[], Executor]) -> list[Run]:
    """Search every group, write `best.parquet`; returns the stage's stored trials as runs."""
    stage, store = runner.stage, runner.store
    tune = stage.stage.tune
    assert tune is not None
    fields = list(stage.task.params.model_fields)
    before = stored_trials(store, stage.name, fields)
    pruned_before = stored_trials(store, stage.name, fields, status=PRUNED)
    stored_curves = curves(store, stage.name, tune.metrics[0]) if pruned_before or stage.scheduler else {}
    searches, done = [], 0
    previous_curves: dict[str, list[tuple[str, dict[int, float], float | None]]] = {}
    for group in stage.groups:
        previous = [t for t in before if group.contains(t.params)]
        pruned = [(t, stored_curves.get(t.run_id, {})) for t in pruned_before if group.contains(t.params)]
        previous_curves[group.label] = (
            [(OK, stored_curves.get(t.run_id, {}), trial_values(t, tune.metrics)[0]) for t in previous]
            + [(PRUNED, curve, None) for _, curve in pruned])
        done += min(len(previous) + len(pruned), tune.num_samples)
        missing = tune.num_samples - len(previous) - len(pruned)  # a pruned trial was a sample
        if missing > 0:
            study = new_study(tune, group, stage.distributions, previous, stage.sampler, pruned)
            searches.append(GroupSearch(group, study, missing))
    total = stage.expected or 0
    runner.progress.stage_started(stage.name, total, done, total - done)
    if searches:
        executor = ensure_executor()
        rule = None
        if stage.scheduler is not None:
            rule = Pruning(*stage.scheduler, tune.metrics[0], tune.modes[0], previous_curves)
        runner.open_steps(executor, rule)
        nan = tuple(math.nan for _ in tune.metrics)
        known = {t.run_id: Known(trial_values(t, tune.metrics)) for t in before}
        if not runner.options.retry:  # a stored failure is a failed trial, not re-run (retry re-runs it)
            known.update({run_id: Known(nan) for run_id, s in runner.states.items() if s.status != OK})
        known.update({t.run_id: Known(nan, True) for t in pruned_before})  # never re-run, even by retry
        runner.trials = TrialSource(tune, stage.distributions, searches, stage.make_run, runner.item,
                                    tune.max_concurrent or executor.slots(stage.resources), known)
        runner.execute(executor, runner.trials)
    after = stored_trials(store, stage.name, fields)
    best = best_rows(tune, stage.groups, after, stage.constraints, time.time())
    store.write_best(stage.name, best)
    infeasible = [row["group"] for row in best if not row["feasible"]]
    if infeasible:
        runner.progress.note(f"stage {stage.name}: no trial met the constraints in group(s) "
                             f"{'; '.join(infeasible)}; they are not transferred")
    runner.progress.stage_finished(stage.name)
    return trial_runs(stage, after)
