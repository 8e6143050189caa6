"""Search for tune stages: Optuna proposes, the ordinary scheduler executes, the store records.

A `tune:` stage expands its `params` into groups (one per value of `group_by`) and searches `space`
with one Optuna study per group (seeded TPE). The study runs in the driver and is asked for a trial
whenever the executor has room (`max_concurrent` per group); each trial is an ordinary run built by
the plan, executed by the same scheduler as a grid run and written by the same row writer, so a trial
is content-addressed, reuses warm model actors, and a killed driver loses only the trials in flight.
Re-running tells each study the group's stored trials first (Optuna's `add_trial`), then asks only
for the missing ones. The best trial per group (metric, mode, constraints, deterministic tie-breaks)
goes to `<stage>/best.parquet`; a `transfer:` stage reads it.

Why not `ray.tune.Tuner`: Tune executes trials in its own actors and result files, beside our
scheduler, fusion, warm actors and row writer; driving Optuna's ask/tell from the scheduler keeps one
execution path and lets a tune stage run with the `inline` executor on a machine without Ray.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from orchestrator.execute import RunResult, WorkItem
from orchestrator.runs import Run, canonical_json
from orchestrator.schema import OK, RESERVED_COLUMNS, from_column, param_column
from orchestrator.select import Constraint, Trial, parse_constraint, select_best
from orchestrator.spec import KeyPath, SpecSource, TuneSpec
from orchestrator.store import ResultStore

SPACE_FORMS = ("uniform", "loguniform", "quniform", "randint", "choice")


# ---------------------------------------------------------------- spec checks


def parse_space(space: dict[str, Any], source: SpecSource, path: KeyPath) -> dict[str, Any]:
    """`tune.space` as optuna distributions (SpecError naming the key when malformed)."""
    import optuna.distributions as od

    parsed: dict[str, Any] = {}
    for key, form in space.items():
        here = (*path, key)
        if not isinstance(form, dict) or len(form) != 1 or next(iter(form)) not in SPACE_FORMS:
            raise source.error(here, f"a search dimension is one of {{{', '.join(SPACE_FORMS)}: ...}}")
        ((kind, args),) = form.items()
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise source.error((*here, kind), "choice takes a non-empty list")
            parsed[key] = od.CategoricalDistribution(args)
            continue
        if not isinstance(args, list) or len(args) != (3 if kind == "quniform" else 2) or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
        ):
            shape = "[low, high, step]" if kind == "quniform" else "[low, high]"
            raise source.error((*here, kind), f"{kind} takes {shape} numbers, got {args!r}")
        low, high = args[0], args[1]
        if not low < high or (kind == "loguniform" and low <= 0):
            reason = "loguniform needs 0 < low < high" if kind == "loguniform" else f"{kind} needs low < high"
            raise source.error((*here, kind), f"{reason}, got {args!r}")
        if kind == "randint":
            parsed[key] = od.IntDistribution(int(low), int(high) - 1)
        else:
            step = args[2] if kind == "quniform" else None
            parsed[key] = od.FloatDistribution(float(low), float(high), log=kind == "loguniform", step=step)
    return parsed


def parse_constraints(texts: list[str], source: SpecSource, path: KeyPath) -> list[Constraint]:
    parsed = []
    for i, text in enumerate(texts):
        try:
            parsed.append(parse_constraint(text))
        except ValueError as exc:
            raise source.error((*path, i), str(exc)) from None
    return parsed


def corner(distribution: Any) -> Any:
    """A value every distribution admits (to validate a group's runs before anything runs)."""
    return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


def corner_values(distribution: Any) -> list[Any]:
    return list(getattr(distribution, "choices", None) or [distribution.low, distribution.high])


@dataclass
class Group:
    """One search: the values of `group_by` and the fixed parameters of its trials."""

    key: dict[str, Any]
    base: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key.items()) or "all"

    def contains(self, params: dict[str, Any]) -> bool:
        return all(param_column(params.get(k)) == param_column(v) for k, v in self.base.items())


# ---------------------------------------------------------------- stored trials


def stored_trials(store: ResultStore, stage: str, fields: list[str]) -> list[Trial]:
    """Finished (ok) runs of a stage, with the mean of each numeric column over their rows."""
    table = store.read_stage(stage)
    if table.num_rows == 0:
        return []
    df = table.to_pandas()
    df = df[df["status"] == OK]
    metric_columns = [c for c in df.columns if c not in fields and c not in RESERVED_COLUMNS
                      and df[c].dtype.kind in "fiub"]
    trials = []
    for run_id, rows in df.groupby("run_id", sort=True):
        first = rows.iloc[0]
        params = {k: from_column(first[k]) for k in fields if k in rows.columns and _present(first[k])}
        metrics = {c: float(rows[c].astype(float).mean()) for c in metric_columns if rows[c].notna().any()}
        trials.append(Trial(str(run_id), params, metrics))
    return trials


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and not (
        pd.api.types.is_scalar(value) and pd.isna(value)
    )


def objective_of(rows: list[dict[str, Any]], metric: str) -> float:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
    return float(sum(values) / len(values)) if values else math.nan


# ---------------------------------------------------------------- the search


REPEAT_ALLOWANCE = 10  # per trial still wanted: proposals of already-known configs before a group gives up


@dataclass
class GroupSearch:
    """One group's Optuna study and the distinct trials it still has to run.

    A proposal whose run is already known (stored, or finished in this command) is told its value and
    does not count as a new trial; a group whose space has fewer distinct points than it wants stops
    after `REPEAT_ALLOWANCE` such repeats per wanted trial.
    """

    group: Group
    study: Any
    to_ask: int
    outstanding: int = 0
    repeats_left: int = 0

    def __post_init__(self) -> None:
        self.repeats_left = REPEAT_ALLOWANCE * max(self.to_ask, 1)


@dataclass
class TrialSource:
    """A work source that asks each group's study for trials as the executor has room.

    `make_run(params)` builds (and validates) the run of a proposed config; `make_item(run)` turns it
    into work. A proposal whose run is already stored (or finished earlier in this command) is told
    its known value at once; one whose run is in flight waits for that run's result.
    """

    tune: TuneSpec
    distributions: dict[str, Any]
    searches: list[GroupSearch]
    make_run: Callable[[dict[str, Any]], Run]
    make_item: Callable[[Run], WorkItem]
    max_concurrent: int
    known: dict[str, float] = field(default_factory=dict)
    pending: dict[str, list[tuple[GroupSearch, Any]]] = field(default_factory=dict)
    cursor: int = 0

    @property
    def exhausted(self) -> bool:
        return all(s.to_ask <= 0 for s in self.searches)

    @property
    def remaining(self) -> int:
        return sum(max(0, s.to_ask) for s in self.searches)

    def take(self, n: int) -> list[WorkItem]:
        items: list[WorkItem] = []
        stalled = 0
        while len(items) < n and stalled < len(self.searches):
            search = self.searches[self.cursor % len(self.searches)]
            self.cursor += 1
            if search.to_ask <= 0 or search.outstanding >= self.max_concurrent:
                stalled += 1
                continue
            stalled = 0
            item = self._propose(search)
            if item is not None:
                items.append(item)
        return items

    def _propose(self, search: GroupSearch) -> WorkItem | None:
        trial = search.study.ask(self.distributions)
        run = self.make_run({**search.group.base, **trial.params})
        repeat = run.run_id in self.known or run.run_id in self.pending
        if repeat:
            search.repeats_left -= 1
            if search.repeats_left <= 0:
                search.to_ask = 0
        else:
            search.to_ask -= 1
        if run.run_id in self.known:
            _tell(search.study, trial, self.known[run.run_id])
            return None
        search.outstanding += 1
        if repeat:
            self.pending[run.run_id].append((search, trial))
            return None
        self.pending[run.run_id] = [(search, trial)]
        return self.make_item(run)

    def finished(self, run_id: str, result: RunResult) -> None:
        """Tell the studies waiting on `run_id` its objective (a failed run is a failed trial)."""
        value = objective_of(result.rows, self.tune.metric) if result.status == OK else math.nan
        self.known[run_id] = value
        for search, trial in self.pending.pop(run_id, []):
            search.outstanding -= 1
            _tell(search.study, trial, value)


def _tell(study: Any, trial: Any, value: float) -> None:
    from optuna.trial import TrialState

    if math.isfinite(value):
        study.tell(trial, value)
    else:
        study.tell(trial, state=TrialState.FAIL)


def new_study(tune: TuneSpec, group: Group, distributions: dict[str, Any], previous: list[Trial]) -> Any:
    """A seeded study for one group, told the group's stored trials (warm start on resume).

    The seed also counts the stored trials, so a resumed search does not replay the random start-up
    proposals of the first (they would all be repeats).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = (tune.seed + zlib.crc32(canonical_json(group.key).encode()) + 7919 * len(previous)) % 2**31
    study = optuna.create_study(
        direction="maximize" if tune.mode == "max" else "minimize", sampler=optuna.samplers.TPESampler(seed=seed)
    )
    for trial in previous:
        value = trial.metrics.get(tune.metric, math.nan)
        if not math.isfinite(value) or not all(k in trial.params for k in distributions):
            continue
        try:
            study.add_trial(optuna.trial.create_trial(
                params={k: trial.params[k] for k in distributions}, distributions=distributions, value=value,
            ))
        except ValueError:  # a stored trial outside today's space: not told
            continue
    return study


# ---------------------------------------------------------------- selection


def best_rows(tune: TuneSpec, groups: list[Group], trials: list[Trial], rules: list[Constraint],
              selected_at: float) -> list[dict[str, Any]]:
    """One `best.parquet` row per group: the chosen trial (or none feasible) and how it was chosen."""
    rows = []
    for group in groups:
        mine = [t for t in trials if group.contains(t.params)]
        best, feasible = select_best(mine, tune.metric, tune.mode, rules)
        row: dict[str, Any] = {f"group_{k}": param_column(v) for k, v in group.key.items()}
        row.update({
            "group": group.label, "feasible": best is not None, "n_trials": len(mine), "n_feasible": feasible,
            "metric": tune.metric, "mode": tune.mode, "constraints": "; ".join(map(str, rules)),
            "best_run_id": best.run_id if best else None,
            "best_value": best.metrics[tune.metric] if best else None,
            "best_params": canonical_json(best.params) if best else None, "selected_at": selected_at,
        })
        rows.append(row)
    return rows
