"""Search for tune stages: Optuna proposes, the ordinary scheduler executes, the store records.

A `tune:` stage expands its `params` into groups (one per value of `group_by`) and searches `space`
with one Optuna study per group (seeded; `sampler:` picks Optuna's sampler). The study runs in the
driver and is asked for a trial
whenever the executor has room (`max_concurrent` per group); each trial is an ordinary run built by
the plan, executed by the same scheduler as a grid run and written by the same row writer, so a trial
is content-addressed, reuses warm model actors, and a killed driver loses only the trials in flight.
Re-running tells each study the group's stored trials first (Optuna's `add_trial`), then asks only
for the missing ones. The best trial per group (metric, mode, constraints, deterministic tie-breaks)
goes to `<stage>/best.parquet`; a `transfer:` stage reads it.

Early stopping (`scheduler:`) is Optuna's pruners fed by `ctx.report`: every report of a trial goes
to the stage's step broker (steps.py), where a `Pruning` rule keeps one pruner study per group and
answers at once whether the trial stops; a stopped trial is stored as `pruned` and told to the
sampling study as PRUNED with its last reported value.

Why not `ray.tune.Tuner`: Tune executes trials in its own actors and result files, beside our
scheduler, fusion, warm actors and row writer; driving Optuna's ask/tell from the scheduler keeps one
execution path and lets a tune stage run with the `inline` executor on a machine without Ray.
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.execute import RunResult, WorkItem
from orchestrator.runs import Run, canonical_json
from orchestrator.schema import OK, PRUNED, RESERVED_COLUMNS, from_column, param_column
from orchestrator.select import Constraint, Trial, parse_constraint, select_best
from orchestrator.spec import KeyPath, SpecSource, TuneSpec
from orchestrator.store import ResultStore

SPACE_FORMS = ("uniform", "loguniform", "quniform", "randint", "choice")

# sampler name -> (optuna class, multi-objective, options the orchestrator sets itself)
SAMPLERS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "tpe": ("TPESampler", True, ("seed",)),
    "random": ("RandomSampler", True, ("seed",)),
    "cmaes": ("CmaEsSampler", False, ("seed",)),
    "gp": ("GPSampler", True, ("seed",)),
    "qmc": ("QMCSampler", True, ("seed",)),
    "nsga2": ("NSGAIISampler", True, ("seed",)),
    "grid": ("GridSampler", True, ("seed", "search_space")),
}
SAMPLER_NEEDS = {"cmaes": ("cmaes",), "qmc": ("scipy",), "gp": ("scipy", "torch")}
# scheduler type -> optuna pruner class, and Ray Tune's names for its options
SCHEDULERS: dict[str, tuple[str, dict[str, str]]] = {
    "asha": ("SuccessiveHalvingPruner", {"grace_period": "min_resource"}),
    "median": ("MedianPruner", {"grace_period": "n_warmup_steps", "min_samples_required": "n_startup_trials"}),
    "hyperband": ("HyperbandPruner", {"grace_period": "min_resource", "max_t": "max_resource"}),
}


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


def _options(form: str | dict[str, Any] | None, kinds: str, known: list[str], source: SpecSource,
             path: KeyPath) -> tuple[str, dict[str, Any]]:
    """`name` or `{type: name, **options}` -> (name, options), the name one of `known`."""
    if isinstance(form, str):
        name, options = form, {}
    elif isinstance(form, dict) and isinstance(form.get("type"), str):
        name, options = form["type"], {k: v for k, v in form.items() if k != "type"}
    else:
        raise source.error(path, f"give the {kinds} as a name or {{type: name, option: value, ...}}, got {form!r}",
                           hint=f"{kinds}s: {', '.join(known)}")
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        raise source.error(path, f"unknown {kinds} '{name}'",
                           hint=(f"did you mean '{close[0]}'? " if close else "") + f"{kinds}s: {', '.join(known)}")
    return name, options


def _check_kwargs(klass: Any, options: dict[str, Any], reserved: tuple[str, ...], what: str, source: SpecSource,
                  path: KeyPath) -> None:
    accepted = [p for p in inspect.signature(klass).parameters if p not in reserved]
    for key in options:
        if key in reserved:
            raise source.error((*path, key), f"{what}: '{key}' is set by the orchestrator (tune.seed, tune.space)")
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + f"options: {', '.join(accepted)}"
            raise source.error((*path, key), f"{what} has no option '{key}'", hint=hint)


def parse_sampler(tune: TuneSpec, distributions: dict[str, Any], source: SpecSource,
                  path: KeyPath) -> tuple[str, dict[str, Any]]:
    """`tune.sampler` checked against the sampler's options and what it can search (SpecError otherwise)."""
    import optuna

    name, options = _options(tune.sampler, "sampler", list(SAMPLERS), source, path)
    class_name, multi, reserved = SAMPLERS[name]
    for module in SAMPLER_NEEDS.get(name, ()):
        try:
            __import__(module)
        except ImportError:
            raise source.error(path, f"sampler {name} needs the package '{module}'",
                               hint="pip install 'interp-sweeps[tune]'") from None
    klass = getattr(optuna.samplers, class_name)
    _check_kwargs(klass, options, reserved, f"sampler {name} ({class_name})", source, path)
    if tune.multi and not multi:
        raise source.error(path, f"sampler {name} optimises one metric; tune.metric lists {len(tune.metrics)}",
                           hint="use tpe, nsga2, gp, qmc, random or grid for several metrics")
    numeric = [k for k, d in distributions.items() if not hasattr(d, "choices")]
    choices = [k for k, d in distributions.items() if hasattr(d, "choices")]
    if name == "cmaes" and len(numeric) < 2:
        raise source.error(path, f"sampler cmaes needs two or more numeric (uniform, loguniform, quniform, randint) "
                                 f"dimensions in tune.space, got {len(numeric)} ({', '.join(numeric) or 'none'})",
                           hint="CMA-ES adapts a covariance between dimensions; use tpe or gp for one")
    if name in ("cmaes", "qmc") and choices:
        raise source.error(path, f"sampler {name} samples numeric dimensions only; tune.space has choice "
                                 f"dimension(s) {', '.join(choices)}", hint="use tpe, gp, nsga2 or random")
    if name == "grid":
        continuous = [k for k, d in distributions.items() if not hasattr(d, "choices")
                      and isinstance(d, optuna.distributions.FloatDistribution) and d.step is None]
        if continuous:
            raise source.error(path, f"sampler grid needs a finite space; dimension(s) {', '.join(continuous)} are "
                                     "continuous", hint="use choice, randint or quniform for a grid")
    try:
        make_sampler(name, options, distributions, 0)
    except (ValueError, TypeError, ImportError) as exc:
        raise source.error(path, f"sampler {name}: {exc}") from None
    return name, options


def grid_space(distributions: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value of each (finite) dimension, for Optuna's GridSampler."""
    space: dict[str, list[Any]] = {}
    for key, d in distributions.items():
        if hasattr(d, "choices"):
            space[key] = list(d.choices)
        else:
            step = d.step or 1
            count = round((d.high - d.low) / step) + 1
            space[key] = [d.low + i * step for i in range(count)]
            if isinstance(d.low, int) and isinstance(step, int):
                space[key] = [int(v) for v in space[key]]
    return space


def make_sampler(name: str, options: dict[str, Any], distributions: dict[str, Any], seed: int) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        klass = getattr(optuna.samplers, SAMPLERS[name][0])
        if name == "grid":
            return _grid_sampler()(grid_space(distributions), seed=seed, **options)
        return klass(seed=seed, **options)


def _grid_sampler() -> Any:
    """Optuna's GridSampler without its `study.stop()` once the grid is covered (that is for
    `study.optimize`; here the group's budget and the repeat allowance end the search)."""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return Grid


def parse_scheduler(tune: TuneSpec, source: SpecSource, path: KeyPath) -> tuple[str, dict[str, Any]] | None:
    """`tune.scheduler` as (type, optuna pruner options), checked by building the pruner (SpecError)."""
    if tune.scheduler is None:
        return None
    import optuna

    name, options = _options(tune.scheduler, "scheduler", list(SCHEDULERS), source, path)
    class_name, aliases = SCHEDULERS[name]
    translated = {aliases.get(k, k): v for k, v in options.items()}
    klass = getattr(optuna.pruners, class_name)
    accepted = [p for p in inspect.signature(klass).parameters]
    for key in options:
        if aliases.get(key, key) not in accepted:
            known = accepted + list(aliases)
            close = difflib.get_close_matches(key, known, n=1)
            raise source.error((*path, key), f"scheduler {name} ({class_name}) has no option '{key}'",
                               hint=(f"did you mean '{close[0]}'? " if close else "") + f"options: {', '.join(known)}")
    if tune.multi:
        raise source.error(path, "a scheduler stops trials on one reported metric; tune.metric lists "
                                 f"{len(tune.metrics)} (Optuna's pruners are single-objective)")
    try:
        klass(**translated)
    except (ValueError, TypeError) as exc:
        raise source.error(path, f"scheduler {name}: {exc}") from None
    return name, translated


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


def stored_trials(store: ResultStore, stage: str, fields: list[str], status: str = OK) -> list[Trial]:
    """Runs of a stage stored with `status` (default: finished), with the mean of each numeric column."""
    table = store.read_stage(stage)
    if table.num_rows == 0:
        return []
    df = table.to_pandas()
    df = df[df["status"] == status]
    metric_columns = [c for c in df.columns if c not in fields and c not in RESERVED_COLUMNS
                      and df[c].dtype.kind in "fiub"]
    trials = []
    for run_id, rows in df.groupby("run_id", sort=True):
        first = rows.iloc[0]
        params = {k: from_column(first[k]) for k in fields if k in rows.columns and _present(first[k])}
        metrics = {c: float(rows[c].astype(float).mean()) for c in metric_columns if rows[c].notna().any()}
        trials.append(Trial(str(run_id), params, metrics))
    return trials


def curves(store: ResultStore, stage: str, metric: str) -> dict[str, dict[int, float]]:
    """run_id -> {step: value} of `metric` in the stage's step rows (latest attempt of each run)."""
    table = store.step_rows(stage)
    if table.num_rows == 0 or metric not in table.column_names:
        return {}
    out: dict[str, dict[int, float]] = {}
    for run_id, step, value in zip(table.column("run_id").to_pylist(), table.column("step").to_pylist(),
                                   table.column(metric).to_pylist(), strict=True):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.setdefault(run_id, {})[int(step)] = float(value)
    return out


def _present(value: Any) -> bool:
    import pandas as pd  # already imported by the caller's to_pandas; kept off the plan path's imports

    return value is not None and not (isinstance(value, float) and math.isnan(value)) and not (
        pd.api.types.is_scalar(value) and pd.isna(value)
    )


def objective_of(rows: list[dict[str, Any]], metric: str) -> float:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
    return float(sum(values) / len(values)) if values else math.nan


Values = tuple[float, ...]  # a trial's objective(s); nan where a run failed


def objectives_of(rows: list[dict[str, Any]], metrics: list[str]) -> Values:
    return tuple(objective_of(rows, m) for m in metrics)


def trial_values(trial: Trial, metrics: list[str]) -> Values:
    return tuple(trial.metrics.get(m, math.nan) for m in metrics)


# ---------------------------------------------------------------- early stopping


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Pruning:
    """The stop rule of a tune stage with a `scheduler`: one Optuna pruner study per group.

    A report of the tuned metric is `trial.report(value, step)` on the group's pruner study, and the
    answer is the pruner's `should_prune()`. Runs that finished are told (COMPLETE / PRUNED / FAIL), so
    median-style rules compare against finished curves; the stored curves of earlier commands seed each
    group's study (`previous`), so a resumed stage judges new trials against the old ones. Picklable:
    the Ray executor ships it to the stage's broker actor, where the studies are built.
    """

    def __init__(self, kind: str, options: dict[str, Any], metric: str, mode: str,
                 previous: dict[str, list[tuple[str, dict[int, float], float | None]]] | None = None) -> None:
        self.kind, self.options, self.metric, self.mode = kind, options, metric, mode
        self.previous = previous or {}  # group -> [(state, curve, final value)]
        self.studies: dict[str, Any] = {}
        self.trials: dict[str, Any] = {}
        self.reported: dict[str, set[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "studies": {}, "trials": {}, "reported": {}}

    def _study(self, group: str) -> Any:
        if group in self.studies:
            return self.studies[group]
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = getattr(optuna.pruners, SCHEDULERS[self.kind][0])(**self.options)
        study = optuna.create_study(direction="maximize" if self.mode == "max" else "minimize", pruner=pruner,
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for state, curve, value in self.previous.get(group, []):
            if not curve:
                continue
            final = TrialState.COMPLETE if state == OK and value is not None and math.isfinite(value) else (
                TrialState.PRUNED)
            study.add_trial(optuna.trial.create_trial(
                state=final, value=value if final == TrialState.COMPLETE else None, intermediate_values=curve))
        self.studies[group] = study
        return study

    def should_stop(self, group: str, run_id: str, step: int, metrics: dict[str, Any]) -> bool:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not _number(value):
            return False
        study = self._study(group)
        trial = self.trials.get(run_id)
        if trial is None:
            trial = self.trials[run_id] = study.ask()
        seen = self.reported.setdefault(run_id, set())
        if step in seen:  # a retried run reporting a step again: judged the first time
            return False
        seen.add(step)
        trial.report(float(value), step)
        last = self.options.get("max_resource")
        if isinstance(last, int) and step >= last:
            return False  # the trial has had all the budget it may get: it finishes (as in Ray Tune's HyperBand)
        return bool(trial.should_prune())

    def finished(self, group: str, run_id: str, state: str, value: float | None) -> None:
        from optuna.trial import TrialState

        trial = self.trials.pop(run_id, None)
        self.reported.pop(run_id, None)
        if trial is None:
            return
        study = self._study(group)
        if state == OK and value is not None and math.isfinite(value):
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState.PRUNED if state == PRUNED else TrialState.FAIL)


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
class Known:
    """What a finished run tells a study: its objective values, or that it was pruned (at a last value)."""

    values: Values
    pruned: bool = False
    last: tuple[int, float] | None = None  # (step, value) of the tuned metric it was stopped at


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
    known: dict[str, Known] = field(default_factory=dict)
    pending: dict[str, list[tuple[GroupSearch, Any]]] = field(default_factory=dict)
    cursor: int = 0
    groups: dict[str, str] = field(default_factory=dict)  # run_id -> group label
    last_step: dict[str, tuple[int, float]] = field(default_factory=dict)  # run_id -> last reported objective

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
        item = self.make_item(run)
        item.payload.step_group = self.groups[run.run_id] = search.group.label
        return item

    def observe(self, steps: list[dict[str, Any]]) -> None:
        """Step rows as they are drained: the last reported objective of each run (for a pruned trial)."""
        metric = self.tune.metrics[0]
        for row in steps:
            if _number(row.get(metric)):
                self.last_step[row["run_id"]] = (int(row["step"]), float(row[metric]))

    def finished(self, run_id: str, result: RunResult) -> Known:
        """Tell the studies waiting on `run_id` its objective (a failed run is a failed trial)."""
        metrics = self.tune.metrics
        values = objectives_of(result.rows, metrics) if result.status == OK else tuple(math.nan for _ in metrics)
        known = self.known[run_id] = Known(values, result.status == PRUNED, self.last_step.pop(run_id, None))
        for search, trial in self.pending.pop(run_id, []):
            search.outstanding -= 1
            _tell(search.study, trial, known)
        return known


def _tell(study: Any, trial: Any, known: Known) -> None:
    from optuna.trial import TrialState

    if known.pruned:
        if known.last is not None:
            trial.report(known.last[1], known.last[0])
        study.tell(trial, state=TrialState.PRUNED)
    elif all(math.isfinite(v) for v in known.values):
        study.tell(trial, list(known.values) if len(known.values) > 1 else known.values[0])
    else:
        study.tell(trial, state=TrialState.FAIL)


def group_seed(tune: TuneSpec, group: Group, previous: int) -> int:
    """The seed of a group's sampler; it also counts the stored trials, so a resumed search does not
    replay the start-up proposals of the first (they would all be repeats)."""
    return (tune.seed + zlib.crc32(canonical_json(group.key).encode()) + 7919 * previous) % 2**31


def new_study(tune: TuneSpec, group: Group, distributions: dict[str, Any], previous: list[Trial],
              sampler: tuple[str, dict[str, Any]] = ("tpe", {}),
              pruned: list[tuple[Trial, dict[int, float]]] | None = None) -> Any:
    """A seeded study for one group, told the group's stored trials (warm start on resume): finished
    ones with their values, pruned ones as PRUNED with their stored curves."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, options = sampler
    directions: list[Literal["minimize", "maximize"]] = ["maximize" if m == "max" else "minimize" for m in tune.modes]
    pruned = pruned or []
    study = optuna.create_study(directions=directions, sampler=make_sampler(
        name, options, distributions, group_seed(tune, group, len(previous) + len(pruned))))
    told: list[tuple[Trial, dict[int, float] | None]] = [(t, None) for t in previous] + list(pruned)
    for trial, curve in told:
        if not all(k in trial.params for k in distributions):
            continue
        values = trial_values(trial, tune.metrics)
        if curve is None and not all(math.isfinite(v) for v in values):
            continue
        try:
            study.add_trial(optuna.trial.create_trial(
                params={k: trial.params[k] for k in distributions}, distributions=distributions,
                values=list(values) if curve is None else None,
                state=TrialState.COMPLETE if curve is None else TrialState.PRUNED,
                intermediate_values=curve or None,
            ))
        except ValueError:  # a stored trial outside today's space: not told
            continue
    return study


# ---------------------------------------------------------------- selection


def pareto_ranks(points: list[Values], modes: list[str]) -> list[int]:
    """Non-dominated sorting: 0 for the Pareto front, 1 for the front once it is removed, and so on."""
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    costs = [tuple(s * v for s, v in zip(signs, p, strict=True)) for p in points]

    def dominates(a: Values, b: Values) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    ranks = [-1] * len(costs)
    left, rank = set(range(len(costs))), 0
    while left:
        front = {i for i in left if not any(dominates(costs[j], costs[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def best_rows(tune: TuneSpec, groups: list[Group], trials: list[Trial], rules: list[Constraint],
              selected_at: float) -> list[dict[str, Any]]:
    """`best.parquet` rows: per group the chosen trial (or none feasible) and how it was chosen; for a
    multi-objective stage every feasible trial with its `pareto_rank` (0: the front)."""
    rows = []
    for group in groups:
        mine = [t for t in trials if group.contains(t.params)]
        row: dict[str, Any] = {f"group_{k}": param_column(v) for k, v in group.key.items()}
        row.update({"group": group.label, "n_trials": len(mine), "constraints": "; ".join(map(str, rules))})
        if tune.multi:
            rows.extend(_front_rows(tune, row, mine, rules, selected_at))
            continue
        best, feasible = select_best(mine, tune.metrics[0], tune.modes[0], rules)
        row.update({
            "feasible": best is not None, "n_feasible": feasible, "metric": tune.metrics[0], "mode": tune.modes[0],
            "best_run_id": best.run_id if best else None,
            "best_value": best.metrics[tune.metrics[0]] if best else None,
            "best_params": canonical_json(best.params) if best else None, "selected_at": selected_at,
        })
        rows.append(row)
    return rows


def _front_rows(tune: TuneSpec, base: dict[str, Any], trials: list[Trial], rules: list[Constraint],
                selected_at: float) -> list[dict[str, Any]]:
    feasible = [t for t in trials if all(math.isfinite(v) for v in trial_values(t, tune.metrics))
                and all(c.holds(t.metrics) for c in rules)]
    feasible.sort(key=lambda t: canonical_json(t.params))
    common = {**base, "n_feasible": len(feasible), "metric": ",".join(tune.metrics), "mode": ",".join(tune.modes),
              "selected_at": selected_at}
    if not feasible:
        return [{**common, "feasible": False, "pareto_rank": None, "best_run_id": None, "best_value": None,
                 "best_params": None, **{f"value_{m}": None for m in tune.metrics}}]
    ranks = pareto_ranks([trial_values(t, tune.metrics) for t in feasible], tune.modes)
    return [{**common, "feasible": True, "pareto_rank": rank, "best_run_id": t.run_id,
             "best_value": t.metrics[tune.metrics[0]], "best_params": canonical_json(t.params),
             **{f"value_{m}": t.metrics[m] for m in tune.metrics}}
            for rank, t in sorted(zip(ranks, feasible, strict=True), key=lambda p: p[0])]


def chosen_rows(best: list[dict[str, Any]], select: str | None, metrics: list[str],
                modes: list[str]) -> list[tuple[dict[str, Any], str]]:
    """The best.parquet rows a transfer runs, each with the rule that chose it.

    One metric: each feasible group's best (`best`). Several: `select: front` (the default) takes every
    front point; `select: <metric>` the front point best on that metric (ties: canonical params).
    """
    feasible = [r for r in best if r["feasible"]]
    if "pareto_rank" not in (best[0] if best else {}) or all(r.get("pareto_rank") is None for r in best):
        return [(r, "best") for r in feasible]
    front = [r for r in feasible if r["pareto_rank"] == 0]
    if select in (None, "front"):
        return [(r, "front") for r in front]
    sign = 1.0 if modes[metrics.index(select)] == "min" else -1.0
    chosen: dict[str, dict[str, Any]] = {}
    for row in front:
        held = chosen.get(row["group"])
        key = (sign * row[f"value_{select}"], row["best_params"])
        if held is None or key < (sign * held[f"value_{select}"], held["best_params"]):
            chosen[row["group"]] = row
    return [(r, f"front:{select}") for r in chosen.values()]
