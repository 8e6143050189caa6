"""`run` and `retry`: drive every stage of a plan through an executor into the store.

Resume is by content: a run whose id already has a stored row is never executed again; `retry`
re-executes only runs whose latest attempt failed. Grid runs, tune trials and transferred runs take
the same path: a work source -> the executor (Ray or inline) -> `on_result` -> the row writer.

Stages stream: consecutive grid and transfer stages run together, and a downstream run starts as soon
as the upstream runs its lineage names are finished, not when their whole stage ends. A tune stage (its
trials are not known in advance) runs alone, so a stage reading it, or transferring from it, starts
after it.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator import logfile
from orchestrator.context import Upstream
from orchestrator.errors import SpecError, StoreError
from orchestrator.execute import Lane, RunPayload, RunResult, WorkItem, WorkSource
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

    def run(self, lanes: Sequence[Lane], on_tick: Callable[[], None] | None = None) -> list[int]: ...


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
    stage_barrier: bool = False  # start a stage only once every stage before it has ended (no streaming)


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
               resolved: Mapping[str, Collection[Run] | None]) -> list[Run] | None:
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


def planned_runs(plan: SweepPlan, store: ResultStore, name: str,
                 resolved: Mapping[str, Collection[Run] | None]) -> Collection[Run] | None:
    """`known_runs`, without listing a linked grid stage's runs: the plan may make them as they are read."""
    stage = plan.stages[name]
    if stage.kind == "grid" and stage.linked:
        return stage.runs.values()
    return known_runs(plan, store, name, resolved)


# ---------------------------------------------------------------- one stage


class StageRun:
    """Executes one stage's work and stores every result: the single path of every run."""

    def __init__(self, plan: SweepPlan, store: ResultStore, stage: StagePlan, options: RunOptions,
                 progress: ProgressSink, resolved: Mapping[str, Collection[Run] | None], scratch: Path,
                 tracking: Tracking | None = None, alongside: dict[str, StageRun] | None = None) -> None:
        """`alongside`: the stages before this one that run together with it (it streams from them)."""
        self.plan, self.store, self.stage, self.options, self.progress = plan, store, stage, options, progress
        self.resolved, self.scratch, self.tracking = resolved, scratch, tracking
        self.states = store.run_states(stage.name)  # kept current while a stage streams from this one
        self.kinds = ColumnKinds(store.column_kinds(stage.name))
        self.outcome = StageOutcome(stage.name)
        self.writer = RowWriter(store, stage.name, options.flush_rows, options.flush_s,
                                on_flush=self.track if tracking is not None else None)
        self.step_writer = RowWriter(store, stage.name, options.flush_rows, options.flush_s, steps=True,
                                     on_flush=self.track_steps if tracking is not None else None)
        self.writer.before_flush = self.store_first
        self.channel: StepChannel | None = None
        self.reported = 0  # ctx.report calls of this command's runs
        self.runs: dict[str, Run] = {}
        alongside = alongside or {}
        self.alongside = {need: alongside[need] for need in stage.needs if need in alongside}
        self.upstream_states = {need: self.alongside[need].states if need in self.alongside else store.run_states(need)
                                for need in stage.needs}
        self.upstream_runs = {need: {r.run_id: r for r in resolved.get(need) or []} for need in stage.needs}
        self.memory = int(stage.resources.memory) if stage.resources.memory else None
        self.trials: TrialSource | None = None
        self.source: StageSource | None = None
        self.unfinished: set[str] = set()  # runs to do that have no result yet (kept for stages streaming from it)
        self.dependents: list[StageSource] = []  # the sources of stages streaming from this one
        self.last_result_at: float | None = None

    def needs_running(self, run: Run) -> bool:
        """Never stored, or (with `retry`) its latest attempt failed."""
        state = self.states.get(run.run_id)
        return state is None or (self.options.retry and not is_final(state.status))

    def to_run(self, runs: Iterable[Run]) -> Iterator[Run]:
        return (run for run in runs if self.needs_running(run))

    def store_first(self) -> None:
        """What is stored before this stage's result rows: the rows of the upstream runs they read (stages
        running alongside), then this stage's step rows (a run's reports before its result)."""
        for upstream in self.alongside.values():
            upstream.writer.flush()
        self.step_writer.flush()

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

    def unfinished_upstream(self, run: Run) -> set[str]:
        """The upstream runs `run` reads that a stage running alongside has yet to finish."""
        if not self.alongside:
            return set()
        return {run_id for need, ids in run.upstream.items() if need in self.alongside
                for run_id in ids if run_id in self.alongside[need].unfinished}

    def missing_upstream(self, run: Run) -> str | None:
        """Why `run` cannot run: an upstream run it reads is not stored as ok."""
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
        problem = self.kinds.admit(rows)
        if problem is not None:  # a value Parquet cannot hold beside the stage's other rows: a failure row
            result.status, result.error_type, result.error, result.rows = FAILED, BAD_OUTPUT, problem, []
            rows = result_rows(run, result, code_state(run.target), package_versions())
            problem = self.kinds.admit(rows)
            if problem is not None:
                raise StoreError(f"{self.store.stage_dir(self.stage.name)}: cannot store run {run.run_id}: {problem}")
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
        if self.dependents:  # (only then: a million-run stage keeps nothing per stored run)
            self.states[run.run_id] = RunState(str(rows[0]["status"]), result.attempt)
        self.last_result_at = time.perf_counter()
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
        self.unfinished.discard(run.run_id)
        for dependent in self.dependents:
            dependent.upstream_finished(run.run_id)

    def store_missing(self, run: Run, reason: str) -> None:
        """Store `run` as `missing_upstream`, without executing it."""
        self.runs[run.run_id] = run
        item = WorkItem(RunPayload(run.run_id, run.target, run.params, run.seed, self.attempt(run), None))
        self.on_result(item, RunResult(run.run_id, FAILED, [], time.time(), 0.0, "", None, item.payload.attempt,
                                       error_type=MISSING_UPSTREAM, error=reason))

    def track(self, rows: list[dict[str, Any]]) -> None:
        """Mirror rows just stored into the trackers (a tracker's failure is a warning, never lost rows)."""
        assert self.tracking is not None
        self.tracking.log_rows(rows, self.stage.task.params.model_fields, self.store.local_artifact_dir)

    def track_steps(self, rows: list[dict[str, Any]]) -> None:
        """Mirror step rows just stored (`ctx.report`): they join their run's tracked run."""
        self.track([step_row(row, self.store.sweep, self.stage.name) for row in rows])

    def close(self) -> None:
        """Store every buffered row (step rows first, then result rows) and close the step broker."""
        self.writer.flush()
        self.step_writer.flush()
        if self.tracking is not None:
            self.tracking.log_pending()
        if self.channel is not None:
            self.channel.close()


class StageSource:
    """A grid or transfer stage's runs to do, in plan order, each made a work item only when taken.

    A run is handed out once every upstream run it reads is finished: stored before this command, or
    finished by a stage running alongside. If one of them is not ok, the run is stored as
    `missing_upstream` instead. A run's rows are never stored before those of the runs it read.
    """

    def __init__(self, runner: StageRun, runs: Iterable[Run], count: int) -> None:
        """`runs`: the runs to do (lazily), `count` of them."""
        self.runner, self.unseen, self.left = runner, iter(runs), count
        self.ready: deque[Run] = deque()
        self.blocked: dict[str, tuple[Run, int]] = {}  # run id -> (run, upstream runs it still waits for)
        self.waiters: dict[str, list[str]] = {}  # upstream run id -> the blocked runs reading it

    @property
    def exhausted(self) -> bool:
        return self.left == 0

    @property
    def remaining(self) -> int:
        return self.left

    def take(self, n: int) -> list[WorkItem]:
        items: list[WorkItem] = []
        while len(items) < n:
            if not self.ready and not self.look_at_next():
                break
            if self.ready:
                items.append(self.runner.item(self.ready.popleft()))
                self.left -= 1
        return items

    def prime(self) -> None:
        """Look at runs until one is ready or every run was looked at: a run whose upstream failed before
        is stored as `missing_upstream` now, before an executor is needed."""
        while not self.ready and self.look_at_next():
            pass

    def look_at_next(self) -> bool:
        """Sort the next unseen run: ready, blocked on upstream runs, or missing upstream; False if none."""
        run = next(self.unseen, None)
        if run is None:
            return False
        waiting = self.runner.unfinished_upstream(run)
        if not waiting:
            self.settle(run)
            return True
        self.blocked[run.run_id] = (run, len(waiting))
        for run_id in waiting:
            self.waiters.setdefault(run_id, []).append(run.run_id)
        return True

    def upstream_finished(self, upstream_id: str) -> None:
        """An upstream run (of a stage running alongside) has its final result."""
        for run_id in self.waiters.pop(upstream_id, []):
            run, waiting = self.blocked.pop(run_id)
            if waiting > 1:
                self.blocked[run_id] = (run, waiting - 1)
            else:
                self.settle(run)

    def settle(self, run: Run) -> None:
        reason = self.runner.missing_upstream(run)
        if reason is None:
            self.ready.append(run)
        else:
            self.left -= 1
            self.runner.store_missing(run, reason)


def execute(runners: list[StageRun], sources: list[WorkSource], executor: Executor) -> None:
    """Run the stages' work through the executor together and store every result."""
    start = time.perf_counter()
    lanes = [Lane(runner.stage.execution, source, runner.on_result) for runner, source in zip(runners, sources,
                                                                                               strict=True)]

    def tick() -> None:
        for runner in runners:
            runner.tick()

    try:
        loads = executor.run(lanes, tick)
        for runner, setup_loads in zip(runners, loads, strict=True):
            runner.outcome.setup_loads = setup_loads
            if runner.reported or runner.outcome.failed:  # a run killed mid-way reported, but could not say so
                runner.drain_steps(wait=True)
    finally:
        for runner in runners:  # upstream stages first: their rows are stored before the rows that read them
            runner.close()
    for runner in runners:
        runner.outcome.wall_s = (runner.last_result_at or time.perf_counter()) - start


# ---------------------------------------------------------------- the sweep


def run_sweep(plan: SweepPlan, store: ResultStore, connect: Callable[[], Executor],
              options: RunOptions | None = None, progress: ProgressSink | None = None) -> list[StageOutcome]:
    """Run (or with `options.retry`, retry the failed runs of) every stage, in dependency order; stages
    stream (`_streams`) unless `options.stage_barrier`.

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

    resolved: dict[str, Collection[Run] | None] = {}
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
            wave: list[tuple[StageRun, Collection[Run]]] = []  # stages that will run together
            for name in plan.order:
                if name not in selected:
                    resolved[name] = planned_runs(plan, store, name, resolved)
                    continue
                stage = plan.stages[name]
                _refuse_foreign_results(store, stage, options.force)
                # running a grid or transfer stage stores its runs; it does not change which runs it has
                runs = None if stage.kind == "tune" else planned_runs(plan, store, name, resolved)
                if wave and (runs is None or not _streams(stage, [r.stage for r, _ in wave], options)):
                    _run_wave(wave, ensure_executor)
                    outcomes += [runner.outcome for runner, _ in wave]
                    wave = []
                runner = StageRun(plan, store, stage, options, progress, resolved, scratch, tracking,
                                  alongside={r.stage.name: r for r, _ in wave})
                if stage.kind == "tune":
                    resolved[name] = _run_tune(runner, ensure_executor)
                    outcomes.append(runner.outcome)
                    continue
                if runs is None:
                    source = stage.stage.transfer or ", ".join(stage.needs)
                    raise SpecError(f"stage '{stage.name}' reads stage '{source}', which has no results yet",
                                    file=stage.loaded.source.file, key=f"stages.{stage.name}")
                resolved[name] = runs
                wave.append((runner, runs))
            if wave:
                _run_wave(wave, ensure_executor)
                outcomes += [runner.outcome for runner, _ in wave]
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


def _streams(stage: StagePlan, wave: list[StagePlan], options: RunOptions) -> bool:
    """Whether `stage` runs together with `wave` (the stages before it about to run), streaming from them.

    Never with `options.stage_barrier`, nor a tune stage. Not a stage with a setup: its model workers would
    hold their resources while its runs wait for upstream runs. Not beside a stage with a time limit: its
    backstop counts from submission, and a run queued behind another stage's runs would time out.
    """
    return (not options.stage_barrier and stage.kind != "tune" and stage.task.setup is None
            and all(s.stage.timeout_s is None for s in [*wave, stage]))


def _run_wave(wave: list[tuple[StageRun, Collection[Run]]], ensure_executor: Callable[[], Executor]) -> None:
    """Run grid and transfer stages together: a run starts once the upstream runs it reads are finished."""
    runners = {runner.stage.name: runner for runner, _ in wave}
    for runner, runs in wave:
        count = sum(1 for _ in runner.to_run(runs))
        runner.progress.stage_started(runner.stage.name, len(runs), len(runs) - count, count)
        runner.source = StageSource(runner, runner.to_run(runs), count)
        for need in runner.alongside:
            runners[need].dependents.append(runner.source)
    for runner, runs in wave:
        if runner.dependents:
            runner.unfinished = {run.run_id for run in runner.to_run(runs)}
    for runner, _ in wave:  # upstream first: a run whose upstream failed before is stored without an executor
        assert runner.source is not None
        runner.source.prime()
    busy = [(runner, runner.source) for runner, _ in wave if runner.source is not None and not runner.source.exhausted]
    if busy:
        executor = ensure_executor()
        for runner, _ in busy:
            runner.open_steps(executor)
        execute([runner for runner, _ in busy], [source for _, source in busy], executor)
    for runner, _ in wave:
        runner.progress.stage_finished(runner.stage.name)


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
        execute([runner], [runner.trials], executor)
    after = stored_trials(store, stage.name, fields)
    best = best_rows(tune, stage.groups, after, stage.constraints, time.time())
    store.write_best(stage.name, best)
    infeasible = [row["group"] for row in best if not row["feasible"]]
    if infeasible:
        runner.progress.note(f"stage {stage.name}: no trial met the constraints in group(s) "
                             f"{'; '.join(infeasible)}; they are not transferred")
    runner.progress.stage_finished(stage.name)
    return trial_runs(stage, after)
