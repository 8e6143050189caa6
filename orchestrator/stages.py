"""Running a sweep: stages in dependency order, upstream artifacts, rows to the store.

Resume is by content: a run whose id already has a stored row is never executed again; `retry`
re-executes only runs whose latest attempt failed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from orchestrator.context import Upstream
from orchestrator.execute import BAD_OUTPUT, RunPayload, RunResult
from orchestrator.provenance import git_commit, package_versions
from orchestrator.runs import Run, StagePlan, stage_plan
from orchestrator.spec import LoadedSpec, stage_order
from orchestrator.store import FAILED, OK, ResultStore, RunState

RESERVED_COLUMNS = (
    "selected_from", "run_id", "sweep", "stage", "task", "task_version", "seed", "status", "error_type", "error", "traceback",
    "attempt", "duration_s", "started_at", "node", "gpu", "git_commit", "versions",
)


class ProgressSink(Protocol):
    def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None: ...
    def advance(self, stage: str, ok: int, failed: int) -> None: ...
    def stage_finished(self, stage: str) -> None: ...


class NullProgress:
    def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None:
        pass

    def advance(self, stage: str, ok: int, failed: int) -> None:
        pass

    def stage_finished(self, stage: str) -> None:
        pass


@dataclass
class StageSummary:
    """What `plan` and `status` show for a stage."""

    name: str
    task: str
    resources: str
    total: int | None
    ok: int = 0
    failed: int = 0
    stored_not_in_spec: int = 0
    note: str = ""

    @property
    def to_run(self) -> int | None:
        return None if self.total is None else self.total - self.ok - self.failed


@dataclass
class StageOutcome:
    name: str
    executed: int = 0
    ok: int = 0
    failed: int = 0
    setup_loads: int = 0
    wall_s: float = 0.0
    failures: list[RunResult] = field(default_factory=list)


def param_column(value: Any) -> Any:
    """Parameters are columns; nested values are stored as canonical JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


class Sweep:
    """A loaded spec bound to a results root."""

    def __init__(self, loaded: LoadedSpec, results_root: str) -> None:
        self.loaded = loaded
        self.store = ResultStore(results_root, loaded.name)
        self.order = stage_order(loaded)
        self.plans: dict[str, StagePlan] = {name: stage_plan(loaded, name) for name in self.order}
        self._states: dict[str, dict[str, RunState]] = {}

    # ---------------------------------------------------------------- planning (no Ray)
    def states(self, stage: str, refresh: bool = False) -> dict[str, RunState]:
        if refresh or stage not in self._states:
            self._states[stage] = self.store.run_states(stage)
        return self._states[stage]

    def is_grid_stage(self, name: str) -> bool:
        stage = self.plans[name].stage
        return stage.tune is None and stage.transfer is None

    def validate(self) -> dict[str, int]:
        """Expand and validate every stage (and its upstream matches) before anything runs; run counts."""
        counts = {}
        for name in self.order:
            plan = self.plans[name]
            if plan.stage.tune is not None:
                from orchestrator.tune import constraints, tune_groups

                counts[name] = len(tune_groups(plan)) * plan.stage.tune.num_samples
                constraints(plan)
            if self.is_grid_stage(name):
                counts[name] = sum(1 for _ in self.checked_runs(name))
        return counts

    def checked_runs(self, name: str) -> Iterator[Run]:
        """The stage's runs, each checked to match a run of every grid stage it needs."""
        plan = self.plans[name]
        match_keys = {need: self.match_keys(name, need) for need in plan.stage.needs if self.is_grid_stage(need)}
        upstream_keys = {need: {self.match_value(r.params, keys) for r in self.plans[need].runs()}
                         for need, keys in match_keys.items()}
        count = 0
        for run in plan.runs():
            count += 1
            for need, keys in upstream_keys.items():
                if self.match_value(run.params, match_keys[need]) not in keys:
                    shown = {k: run.params.get(k) for k in match_keys[need]}
                    raise self.loaded.source.error(
                        ("stages", name, "needs"),
                        f"a run with {shown} matches no run of stage '{need}' "
                        f"(runs are matched on the parameters both stages set: {', '.join(match_keys[need]) or 'none'})",
                    )
            yield run
        if count == 0:
            raise self.loaded.source.error(("stages", name, "params"), "the stage expands to no runs")

    def summaries(self) -> list[StageSummary]:
        """Per stage: runs in the spec, and how many are already stored as ok / failed (validates too)."""
        out = []
        for name in self.order:
            plan = self.plans[name]
            states = self.states(name, refresh=True)
            summary = StageSummary(name, plan.task.name, plan.resources.describe(), None)
            stage = plan.stage
            if stage.tune is not None:
                summary.note = f"tune: {stage.tune.num_samples} trials per group of {stage.tune.group_by or 'all'}"
            elif stage.transfer is not None:
                summary.note = f"transfer: best config per group of '{stage.transfer}', after its selection"
            if self.is_grid_stage(name):
                stored_in_spec = set()
                total = 0
                for run in self.checked_runs(name):
                    total += 1
                    state = states.get(run.run_id)
                    if state is not None and run.run_id not in stored_in_spec:
                        stored_in_spec.add(run.run_id)
                        summary.ok += state.status == OK
                        summary.failed += state.status == FAILED
                summary.total = total
                summary.stored_not_in_spec = len(states) - len(stored_in_spec)
            else:
                from orchestrator.tune import expected_runs

                summary.total = expected_runs(self, name)
                summary.ok = sum(s.status == OK for s in states.values())
                summary.failed = sum(s.status == FAILED for s in states.values())
            out.append(summary)
        return out

    # ---------------------------------------------------------------- upstream matching
    def match_keys(self, stage: str, need: str) -> list[str]:
        """Parameters both stages set in the spec: a downstream run uses the upstream runs that agree on them."""
        mine = self.plans[stage].space.declared_keys()
        theirs = set(self.plans[need].space.declared_keys())
        return [k for k in mine if k in theirs]

    @staticmethod
    def match_value(params: dict[str, Any], keys: list[str]) -> tuple[Any, ...]:
        """The values of `keys` in `params`, as compared when matching runs to upstream runs."""
        return tuple(param_column(params.get(k)) for k in keys)

    def upstream_index(self, stage: str, cache_dir: Path) -> dict[str, tuple[list[str], dict[tuple, list[Upstream]]]]:
        index = {}
        for need in self.plans[stage].stage.needs:
            keys = self.match_keys(stage, need)
            states = self.states(need, refresh=True)
            table: dict[tuple, list[Upstream]] = {}
            for run in self._stage_runs(need):
                state = states.get(run.run_id)
                if state is None or state.status != OK:
                    continue
                local = self.store.local_artifact_dir(run.run_id)
                if local is None:
                    try:
                        local = self.store.fetch_artifacts(run.run_id, cache_dir)
                    except (FileNotFoundError, OSError):
                        local = cache_dir / run.run_id  # absent: the run reports missing upstream artifacts
                table.setdefault(self.match_value(run.params, keys), []).append(Upstream(need, run.run_id, run.params, local))
            index[need] = (keys, table)
        return index

    def _stage_runs(self, name: str) -> Iterator[Run]:
        if self.is_grid_stage(name):
            return self.plans[name].runs()
        rows = self.store.read_stage(name, columns=["run_id"])
        return iter(self.stored_runs(name, rows.column("run_id").to_pylist()))

    def stored_runs(self, name: str, run_ids: list[str]) -> list[Run]:
        """Rebuild the Run objects of stored runs (tune trials, transferred runs) from their rows."""
        plan = self.plans[name]
        fields = list(plan.task.params.model_fields)
        table = self.store.read_stage(name, columns=fields)
        seen, runs = set(run_ids), {}
        for row in table.to_pylist():
            if row["run_id"] in seen and row["run_id"] not in runs:
                params = {k: from_column(row.get(k)) for k in fields if row.get(k) is not None}
                runs[row["run_id"]] = Run(self.loaded.name, name, plan.task.name, plan.task.version,
                                          plan.task.params.model_validate(params).model_dump(mode="json"),
                                          row["run_id"])
        return list(runs.values())

    def payload(self, run: Run, attempt: int, upstream: dict[str, list[Upstream]], memory: int | None) -> RunPayload:
        artifact_root = str(Path(self.store.base) / "artifacts") if self.store.is_local else None
        return RunPayload(run.run_id, run.task, run.params, run.seed, attempt, artifact_root, upstream, memory)

    def work_for(self, name: str, retry: bool) -> Iterator[tuple[Run, int]]:
        """(run, attempt) for every run to execute: never stored, or (with `retry`) latest attempt failed."""
        states = self.states(name, refresh=True)
        for run in self.plans[name].runs():
            state = states.get(run.run_id)
            if state is None:
                yield run, 1
            elif retry and state.status == FAILED:
                yield run, state.attempt + 1

    def scratch(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"sweep-{self.loaded.name}-"))


def result_rows(run: Run, result: RunResult, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Stored rows of one finished run: identity, parameters, metrics, status and provenance."""
    base: dict[str, Any] = {
        "run_id": run.run_id, "sweep": run.sweep, "stage": run.stage, "task": run.task,
        "task_version": run.task_version,
    }
    for key, value in run.params.items():
        base[key] = param_column(value)
    if result.status == OK:
        problem = _column_clash(result.rows, run.params)
        if problem:
            result.status, result.error_type, result.error, result.rows = FAILED, BAD_OUTPUT, problem, []
    tail = {
        **(extra or {}),
        "seed": run.seed,
        "status": result.status,
        "error_type": result.error_type,
        "error": result.error,
        "traceback": result.traceback,
        "attempt": result.attempt,
        "duration_s": result.duration_s,
        "started_at": datetime.fromtimestamp(result.started_at, tz=timezone.utc),
        "node": result.node,
        "gpu": result.gpu,
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    if result.status != OK or not result.rows:
        return [{**base, **tail}]
    return [{**base, **row, **tail} for row in result.rows]


def from_column(value: Any) -> Any:
    """A parameter as read back from its column (the inverse of `param_column`)."""
    if hasattr(value, "item"):  # numpy scalars from pandas
        value = value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _column_clash(rows: list[dict[str, Any]], params: dict[str, Any]) -> str | None:
    for row in rows:
        for key, value in row.items():
            if key in RESERVED_COLUMNS:
                return f"the task returned column '{key}', which is reserved for the orchestrator"
            if key in params and value != params[key] and param_column(value) != param_column(params[key]):
                return f"the task returned column '{key}'={value!r}, clashing with parameter {key}={params[key]!r}"
    return None
