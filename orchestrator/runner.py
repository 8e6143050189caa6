"""`run` and `retry`: drive every stage of a sweep through the scheduler into the store."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import cluster
from orchestrator.runs import Run
from orchestrator.scheduler import SchedulerConfig, StageScheduler, WorkItem
from orchestrator.stages import NullProgress, ProgressSink, StageOutcome, Sweep, result_rows
from orchestrator.store import OK, SweepLock


@dataclass
class RunOptions:
    retry: bool = False
    flush_rows: int = 5000
    flush_s: float = 2.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    stages: list[str] | None = None  # only these stages (default: all)


class _RowWriter:
    """Buffers rows and writes them as one atomic Parquet part per flush."""

    def __init__(self, sweep: Sweep, stage: str, options: RunOptions) -> None:
        self.sweep, self.stage, self.options = sweep, stage, options
        self.rows: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.options.flush_rows:
            self.flush()

    def tick(self) -> None:
        if self.rows and time.monotonic() - self.last_flush >= self.options.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.sweep.store.write_rows(self.stage, self.rows)
            self.rows = []
        self.last_flush = time.monotonic()


def run_stage(sweep: Sweep, name: str, work: Iterator[tuple[Run, int]], total: int, options: RunOptions,
              progress: ProgressSink, extras: dict[str, dict[str, Any]] | None = None) -> StageOutcome:
    """Execute `work` ((run, attempt) pairs) for one stage and store every result.

    `extras`: per run id, columns added to its rows (a transferred run's `selected_from`).
    """
    plan = sweep.plans[name]
    extras = extras or {}
    outcome = StageOutcome(name)
    writer = _RowWriter(sweep, name, options)
    cache_dir = sweep.scratch()
    upstream = sweep.upstream_index(name, cache_dir)
    memory = int(plan.resources.memory) if plan.resources.memory else None
    runs_by_id: dict[str, Run] = {}

    def items() -> Iterator[WorkItem]:
        for run, attempt in work:
            links = {need: table.get(sweep.match_value(run.params, keys), []) for need, (keys, table) in upstream.items()}
            runs_by_id[run.run_id] = run
            yield WorkItem(sweep.payload(run, attempt, links, memory), plan.task.setup_key(run.params))

    def on_result(item: WorkItem, result: Any) -> None:
        run = runs_by_id.pop(item.payload.run_id)
        writer.add(result_rows(run, result, extras.get(run.run_id)))
        if result.artifact_dir:
            sweep.store.publish_artifacts(run.run_id, Path(result.artifact_dir))
            shutil.rmtree(result.artifact_dir, ignore_errors=True)
        outcome.executed += 1
        if result.status == OK:
            outcome.ok += 1
            progress.advance(name, 1, 0)
        else:
            outcome.failed += 1
            outcome.failures.append(result)
            progress.advance(name, 0, 1)

    scheduler = StageScheduler(
        plan.task, plan.resources, plan.stage.retries, cluster.capacity(plan.resources), on_result,
        options.scheduler, plan.stage.max_workers, on_tick=writer.tick,
    )
    start = time.perf_counter()
    try:
        scheduler.run(items(), total)
    finally:
        writer.flush()
        shutil.rmtree(cache_dir, ignore_errors=True)
    outcome.wall_s = time.perf_counter() - start
    outcome.setup_loads = scheduler.setup_loads
    return outcome


def run_sweep(sweep: Sweep, options: RunOptions | None = None, progress: ProgressSink | None = None,
              connect: Callable[[], object] | None = None) -> list[StageOutcome]:
    """Run (or with `options.retry`, retry the failed runs of) every stage, in dependency order.

    `connect` attaches to Ray; it is called only once some stage has work, so re-running a finished
    sweep starts no cluster. Resources are checked against the cluster before any run starts. Holds the
    sweep's lock throughout.
    """
    options = options or RunOptions()
    progress = progress or NullProgress()
    counts = sweep.validate()
    selected = [s for s in sweep.order if options.stages is None or s in options.stages]
    connected = False

    def ensure_cluster() -> None:
        nonlocal connected
        if connected:
            return
        if connect is not None:
            connect()
        nodes = cluster.alive_nodes()
        for name in selected:
            cluster.check_feasible(name, sweep.plans[name].resources, nodes)
        connected = True

    outcomes = []
    with SweepLock(sweep.store):
        sweep.store.remove_stale_temporaries()
        for name in selected:
            if not sweep.is_grid_stage(name):
                from orchestrator.tune import run_selection_stage

                outcomes.append(run_selection_stage(sweep, name, options, progress, ensure_cluster))
                continue
            states = sweep.states(name, refresh=True)
            done = sum(1 for s in states.values() if s.status == OK)
            work = list(sweep.work_for(name, options.retry))
            progress.stage_started(name, counts[name], done, len(work))
            if work:
                ensure_cluster()
                outcomes.append(run_stage(sweep, name, iter(work), len(work), options, progress))
            else:
                outcomes.append(StageOutcome(name))
            progress.stage_finished(name)
    return outcomes
