"""What `plan` and `status` show per stage: the plan's distinct runs against what is stored."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.plan import SweepPlan
from orchestrator.runner import known_runs
from orchestrator.runs import Run
from orchestrator.schema import OK, PRUNED, is_failure
from orchestrator.store import ResultStore


@dataclass
class StageSummary:
    name: str
    task: str
    resources: str
    total: int | None  # runs of the plan (None: known only once upstream runs exist)
    ok: int = 0
    failed: int = 0
    pruned: int = 0  # tune trials stopped early by the stage's scheduler (final, like ok)
    stored_not_in_spec: int = 0
    duplicates: int = 0  # points that validated to the params of an earlier point (merged)
    note: str = ""

    @property
    def to_run(self) -> int | None:
        return None if self.total is None else self.total - self.ok - self.failed - self.pruned


def summarize(plan: SweepPlan, store: ResultStore) -> list[StageSummary]:
    """Per stage: runs of the plan, and how many of them are stored as ok / failed.

    A linked grid stage's runs are only counted and their ids streamed past the stored ones (a plan may
    make them as they are read); they are listed only for a stage that needs them and is not linked yet.
    """
    out = []
    resolved: dict[str, list[Run] | None] = {}
    read_later = {need for s in plan.stages.values() if s.kind == "grid" and not s.linked for need in s.needs}
    for name in plan.order:
        stage = plan.stages[name]
        states = store.run_states(name)
        summary = StageSummary(name, stage.task.name, stage.resources.describe(), None, duplicates=stage.duplicates)
        ids: Iterable[str]
        if stage.kind == "grid" and stage.linked:
            summary.total, ids = len(stage.runs), stage.runs
            if name in read_later:
                resolved[name] = list(stage.runs.values())
        else:
            runs = known_runs(plan, store, name, resolved)
            resolved[name] = runs
            ids = (run.run_id for run in runs or [])
            summary.total = stage.expected if stage.kind == "tune" else None if runs is None else len(runs)
        if stage.kind == "tune":
            tune = stage.stage.tune
            assert tune is not None
            summary.note = f"tune: {tune.num_samples} trials per group of {tune.group_by or 'all'}"
        elif stage.kind == "transfer":
            summary.note = f"transfer: best config per group of '{stage.stage.transfer}', after its selection"
        mine = {run_id for run_id in ids if run_id in states} if states else set()  # of the stored runs
        if stage.kind == "tune":  # pruned trials belong to the stage, though nothing reads them downstream
            mine |= {run_id for run_id, state in states.items() if state.status == PRUNED}
        for run_id in mine:
            summary.ok += states[run_id].status == OK
            summary.failed += is_failure(states[run_id].status)
            summary.pruned += states[run_id].status == PRUNED
        if stage.kind == "tune":  # a group's trials beyond num_samples are not "to run"
            summary.ok = min(summary.ok, summary.total or 0)
            summary.pruned = min(summary.pruned, (summary.total or 0) - summary.ok)
            summary.failed = min(summary.failed, (summary.total or 0) - summary.ok - summary.pruned)
            if summary.pruned:
                summary.note += f"; {summary.pruned} pruned"
        summary.stored_not_in_spec = len(states.keys() - mine)
        if summary.duplicates:
            merged = f"{summary.duplicates} duplicate point(s) merged"
            summary.note = f"{summary.note}; {merged}" if summary.note else merged
        out.append(summary)
    return out
