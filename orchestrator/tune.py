"""Tune stages (Ray Tune + Optuna on the val split) and transfer stages (best config -> test split).

A `tune:` stage expands its `params` into groups (one per value of `group_by`) and runs one Ray Tune
experiment per group with `OptunaSearch` over `space`. Every trial is an ordinary run: content-addressed,
executed by the same worker code, and written to the Parquet store by the trial itself, so a driver crash
loses only trials in flight. Re-running the sweep tells Optuna the stored trials (`evaluated_rewards`)
and runs only the missing ones. The best trial per group (metric, mode, constraints, tie-breaks) is
written to `<stage>/best.parquet`; a `transfer:` stage runs each group's best config with its own params
(e.g. `split: test`, seeds), and its rows name the trial they came from (`selected_from`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from orchestrator.errors import OrchestratorError, SpecError
from orchestrator.execute import RunPayload, current_gpu_ids, execute_run, worker_cache
from orchestrator.expand import parse_params
from orchestrator.runs import Run, StagePlan, canonical_json
from orchestrator.select import Constraint, Trial, parse_constraint, select_best
from orchestrator.stages import (
    RESERVED_COLUMNS, ProgressSink, StageOutcome, Sweep, from_column, param_column, result_rows,
)
from orchestrator.store import OK, ResultStore

SPACE_FORMS = ("uniform", "loguniform", "quniform", "randint", "choice")
OBJECTIVE = "objective"


# ---------------------------------------------------------------- spec checks


def distributions(plan: StagePlan) -> dict[str, Any]:
    """The stage's `tune.space` as optuna distributions (SpecError naming the key when malformed)."""
    import optuna.distributions as od

    space: dict[str, Any] = {}
    for key, form in plan.stage.tune.space.items():  # type: ignore[union-attr]
        path = plan.path("tune", "space", key)
        if not isinstance(form, dict) or len(form) != 1 or next(iter(form)) not in SPACE_FORMS:
            raise plan.loaded.source.error(path, f"a search dimension is one of {{{', '.join(SPACE_FORMS)}: ...}}")
        (kind, args), = form.items()
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise plan.loaded.source.error(path + (kind,), "choice takes a non-empty list")
            space[key] = od.CategoricalDistribution(args)
            continue
        if not isinstance(args, list) or len(args) != (3 if kind == "quniform" else 2) or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
        ):
            shape = "[low, high, step]" if kind == "quniform" else "[low, high]"
            raise plan.loaded.source.error(path + (kind,), f"{kind} takes {shape} numbers, got {args!r}")
        low, high = args[0], args[1]
        if not low < high or (kind == "loguniform" and low <= 0):
            raise plan.loaded.source.error(path + (kind,), f"{kind} needs 0 < low < high" if kind == "loguniform"
                                           else f"{kind} needs low < high, got {args!r}")
        if kind == "randint":
            space[key] = od.IntDistribution(int(low), int(high) - 1)
        else:
            step = args[2] if kind == "quniform" else None
            space[key] = od.FloatDistribution(float(low), float(high), log=kind == "loguniform", step=step)
    return space


def constraints(plan: StagePlan) -> list[Constraint]:
    parsed = []
    for i, text in enumerate(plan.stage.tune.constraints):  # type: ignore[union-attr]
        try:
            parsed.append(parse_constraint(text))
        except ValueError as exc:
            raise plan.loaded.source.error(plan.path("tune", "constraints", i), str(exc)) from None
    return parsed


@dataclass
class Group:
    """One tune experiment: the values of `group_by` and the fixed parameters of its trials."""

    key: dict[str, Any]
    base: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key.items()) or "all"


def tune_groups(plan: StagePlan) -> list[Group]:
    """Expand the stage's params into groups; refuse axes that vary inside a group."""
    tune = plan.stage.tune
    groups: dict[str, Group] = {}
    for params in plan.space:
        for key in tune.space:  # type: ignore[union-attr]
            params.pop(key, None)
        key = {k: params.get(k) for k in tune.group_by}  # type: ignore[union-attr]
        label = canonical_json(key)
        if label in groups and groups[label].base != params:
            varying = sorted(k for k in params if params[k] != groups[label].base.get(k))
            raise plan.loaded.source.error(
                plan.path("params"), f"parameter(s) {', '.join(varying)} vary inside a tune group",
                hint="add them to tune.group_by",
            )
        groups[label] = Group(key, params)
    space = distributions(plan)
    for group in groups.values():  # every corner of the space must be a valid run
        for name, dist in space.items():
            values = getattr(dist, "choices", None) or [dist.low, dist.high]
            for value in values:
                plan.make_run({**group.base, **{k: _corner(d) for k, d in space.items()}, name: value})
    return list(groups.values())


def _corner(dist: Any) -> Any:
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


def expected_runs(sweep: Sweep, name: str) -> int | None:
    """Runs a tune or transfer stage will have (None for a transfer whose selection has not run yet)."""
    plan = sweep.plans[name]
    if plan.stage.tune is not None:
        return len(tune_groups(plan)) * plan.stage.tune.num_samples
    best = read_best(sweep.store, plan.stage.transfer)  # type: ignore[arg-type]
    if not best:
        return None
    per_config = sum(1 for _ in parse_params(plan.stage.params, sweep.loaded.source, plan.path("params")))
    return sum(1 for row in best if row["feasible"]) * per_config


# ---------------------------------------------------------------- stored trials


def stored_trials(sweep: Sweep, name: str) -> list[Trial]:
    """Finished (ok) runs of a stage, with the mean of each numeric column over their rows."""
    plan = sweep.plans[name]
    table = sweep.store.read_stage(name)
    if table.num_rows == 0:
        return []
    fields = set(plan.task.params.model_fields)
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
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _in_group(trial: Trial, group: Group) -> bool:
    return all(param_column(trial.params.get(k)) == param_column(v) for k, v in group.base.items())


# ---------------------------------------------------------------- trials on Ray Tune


@dataclass
class TrialSpec:
    """Everything a Tune trial needs to build, execute and store its run (small, picklable)."""

    root: str
    sweep: str
    stage: str
    task: str
    task_version: int
    base: dict[str, Any]
    metric: str
    known: dict[str, float]  # run_id -> objective of runs already stored
    memory: int | None


def objective_of(rows: list[dict[str, Any]], metric: str) -> float:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
    return float(sum(values) / len(values)) if values else math.nan


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """A Tune trial: build the run, reuse it if stored, else execute and store it; report the objective."""
    from ray import tune

    from orchestrator.registry import get_task
    from orchestrator.runs import make_run_id

    task = get_task(spec.task)
    params = task.params.model_validate({**spec.base, **config}).model_dump(mode="json")
    run = Run(spec.sweep, spec.stage, spec.task, spec.task_version, params,
              make_run_id(spec.task, spec.task_version, params))
    if run.run_id in spec.known:
        tune.report({OBJECTIVE: spec.known[run.run_id], "run_id": run.run_id, "reused": True})
        return
    store = ResultStore(spec.root, spec.sweep)
    artifact_root = f"{store.base}/artifacts" if store.is_local else None
    payload = RunPayload(run.run_id, run.task, params, run.seed, 1, artifact_root, {}, spec.memory)
    result = execute_run(payload, worker_cache(), current_gpu_ids())
    rows = result_rows(run, result)
    store.write_rows(spec.stage, rows)
    value = objective_of(result.rows, spec.metric) if result.status == OK else math.nan
    tune.report({OBJECTIVE: value, "run_id": run.run_id, "reused": False})


def _tune_group(sweep: Sweep, plan: StagePlan, group: Group, previous: list[Trial], new_trials: int) -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet rows are the record
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-experiment boxes between our progress bars
    import logging

    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # With per-trial files off, Tune's ResultGrid cannot read trial metrics; our rows are the record.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    tune_spec = plan.stage.tune
    space = distributions(plan)
    seed = tune_spec.seed + zlib.crc32(canonical_json(group.key).encode())  # type: ignore[union-attr]
    known = {t.run_id: t.metrics.get(tune_spec.metric, math.nan) for t in previous}  # type: ignore[union-attr]
    told = [t for t in previous if math.isfinite(known[t.run_id]) and all(k in t.params for k in space)]
    searcher = OptunaSearch(
        space=space, metric=OBJECTIVE, mode=tune_spec.mode,  # type: ignore[union-attr]
        sampler=optuna.samplers.TPESampler(seed=seed % 2**31),
        points_to_evaluate=[{k: t.params[k] for k in space} for t in told] or None,
        evaluated_rewards=[known[t.run_id] for t in told] or None,
    )
    res = plan.resources
    trial_resources = {"cpu": res.num_cpus, "gpu": res.num_gpus, **res.custom}
    if res.memory:
        trial_resources["memory"] = int(res.memory)
    if res.accelerator_type:
        trial_resources[f"accelerator_type:{res.accelerator_type}"] = 0.001
    spec = TrialSpec(sweep.store.root, sweep.loaded.name, plan.name, plan.task.name, plan.task.version, group.base,
                     tune_spec.metric, known, int(res.memory) if res.memory else None)  # type: ignore[union-attr]
    from orchestrator import cluster

    concurrency = tune_spec.max_concurrent or max(1, cluster.capacity(res))  # type: ignore[union-attr]
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, spec=spec), trial_resources),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=new_trials, max_concurrent_trials=concurrency,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=tempfile.mkdtemp(prefix="tune-"), name=f"{plan.name}", verbose=0,
            failure_config=tune.FailureConfig(max_failures=plan.stage.retries.system),
        ),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise OrchestratorError(f"stage {plan.name}, group {group.label}: {len(errors)} Tune trial(s) crashed "
                                f"outside the task: {errors[0]}")


# ---------------------------------------------------------------- stages


BEST_FILE = "best.parquet"


def read_best(store: ResultStore, stage: str) -> list[dict[str, Any]]:
    path = store.best_path(stage)
    if not store.fs.get_file_info(path).is_file:
        return []
    import pyarrow.parquet as pq

    with store.fs.open_input_file(path) as handle:
        return pq.read_table(handle).to_pylist()


def write_best(sweep: Sweep, plan: StagePlan, groups: list[Group], trials: list[Trial]) -> list[dict[str, Any]]:
    tune_spec = plan.stage.tune
    rules = constraints(plan)
    rows = []
    for group in groups:
        mine = [t for t in trials if _in_group(t, group)]
        best, feasible = select_best(mine, tune_spec.metric, tune_spec.mode, rules)  # type: ignore[union-attr]
        row: dict[str, Any] = {f"group_{k}": param_column(v) for k, v in group.key.items()}
        row.update({
            "group": group.label, "feasible": best is not None, "n_trials": len(mine), "n_feasible": feasible,
            "metric": tune_spec.metric, "mode": tune_spec.mode,  # type: ignore[union-attr]
            "constraints": "; ".join(map(str, rules)), "best_run_id": best.run_id if best else None,
            "best_value": best.metrics[tune_spec.metric] if best else None,  # type: ignore[union-attr]
            "best_params": canonical_json(best.params) if best else None, "selected_at": time.time(),
        })
        rows.append(row)
    sweep.store.write_table(plan.name, pa.Table.from_pylist(rows), name=BEST_FILE)
    return rows


def run_selection_stage(sweep: Sweep, name: str, options: Any, progress: ProgressSink,
                        ensure_cluster: Callable[[], None]) -> StageOutcome:
    plan = sweep.plans[name]
    if plan.stage.tune is not None:
        return _run_tune_stage(sweep, plan, progress, ensure_cluster)
    return _run_transfer_stage(sweep, plan, options, progress, ensure_cluster)


def _run_tune_stage(sweep: Sweep, plan: StagePlan, progress: ProgressSink,
                    ensure_cluster: Callable[[], None]) -> StageOutcome:
    tune_spec = plan.stage.tune
    groups = tune_groups(plan)
    before = stored_trials(sweep, plan.name)
    stored_before = len(sweep.states(plan.name, refresh=True))
    total = len(groups) * tune_spec.num_samples  # type: ignore[union-attr]
    missing = {g.label: tune_spec.num_samples - sum(_in_group(t, g) for t in before) for g in groups}  # type: ignore[union-attr]
    progress.stage_started(plan.name, total, total - sum(max(0, m) for m in missing.values()),
                           sum(max(0, m) for m in missing.values()))
    outcome = StageOutcome(plan.name)
    start = time.perf_counter()
    for group in groups:
        if missing[group.label] <= 0:
            continue
        ensure_cluster()
        _tune_group(sweep, plan, group, [t for t in before if _in_group(t, group)], missing[group.label])
    after = stored_trials(sweep, plan.name)
    states = sweep.states(plan.name, refresh=True)
    outcome.failed = sum(1 for s in states.values() if s.status != OK)
    outcome.executed = outcome.ok = len(after) - len(before)
    wanted = sum(max(0, m) for m in missing.values())
    if len(states) - stored_before < wanted:
        raise OrchestratorError(
            f"stage {plan.name}: {wanted} trials ran but only {len(states) - stored_before} reached the store at "
            f"{sweep.store.base}; the results root must be reachable from every worker (a shared path or URI)"
        )
    progress.advance(plan.name, outcome.ok, 0)
    best = write_best(sweep, plan, groups, after)
    infeasible = [row["group"] for row in best if not row["feasible"]]
    if infeasible:
        from warnings import warn

        warn(f"stage {plan.name}: no trial met the constraints in group(s) {'; '.join(infeasible)}; "
             "they are not transferred", stacklevel=2)
    progress.stage_finished(plan.name)
    outcome.wall_s = time.perf_counter() - start
    return outcome


def transfer_work(sweep: Sweep, plan: StagePlan) -> list[tuple[Run, str]]:
    """(run, selected_from) for every transferred run: each group's best config with this stage's params."""
    source = plan.stage.transfer
    best = read_best(sweep.store, source)  # type: ignore[arg-type]
    if not best:
        raise SpecError(f"stage '{plan.name}' transfers from '{source}', which has no best.parquet yet",
                        file=sweep.loaded.source.file, key=f"stages.{plan.name}.transfer")
    overlay = parse_params(plan.stage.params, sweep.loaded.source, plan.path("params"))
    work = []
    for row in best:
        if not row["feasible"]:
            continue
        chosen = json.loads(row["best_params"])
        for extra in overlay:
            work.append((plan.make_run({**chosen, **extra}), row["best_run_id"]))
    return work


def _run_transfer_stage(sweep: Sweep, plan: StagePlan, options: Any, progress: ProgressSink,
                        ensure_cluster: Callable[[], None]) -> StageOutcome:
    from orchestrator.runner import run_stage

    work = transfer_work(sweep, plan)
    states = sweep.states(plan.name, refresh=True)
    todo = [(run, 1 if run.run_id not in states else states[run.run_id].attempt + 1, origin)
            for run, origin in work
            if run.run_id not in states or (options.retry and states[run.run_id].status != OK)]
    progress.stage_started(plan.name, len(work), len(work) - len(todo), len(todo))
    if not todo:
        progress.stage_finished(plan.name)
        return StageOutcome(plan.name)
    ensure_cluster()
    extras = {run.run_id: {"selected_from": origin} for run, _, origin in todo}
    outcome = run_stage(sweep, plan.name, iter([(r, a) for r, a, _ in todo]), len(todo), options, progress, extras)
    progress.stage_finished(plan.name)
    return outcome
