"""The plan: a spec loaded, expanded and validated once per command; every later step reads it.

Per stage the plan holds the task, its resources and retries, and
- a grid stage: its distinct runs (points that validate to the same params are one run) with their
  lineage-addressed ids, and for each run the upstream runs it reads (a stage that needs none, has no
  references or conditions and a task whose fields validate independently: its axes, validated value by
  value, with runs made as they are read, see `product.py`);
- a tune stage: its groups, search space and constraints (trials are made by `make_run`);
- a transfer stage: its own params, expanded, to lay over each group's selected config.
A stage that `needs` a tune or transfer stage gets its runs once that stage's runs are known
(`link`), since its run ids include theirs.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import SpecError, UnknownTaskError
from orchestrator.execute import StageExecution
from orchestrator.expand import DEFAULT_MAX_RUNS, ParamSpace, check_run_limit, parse_params
from orchestrator.product import product_runs
from orchestrator.registry import TaskDef, get_task
from orchestrator.runs import Run, canonical_json, make_run_id
from orchestrator.schema import param_column
from orchestrator.select import Constraint
from orchestrator.spec import KeyPath, LoadedSpec, Resources, Stage, stage_order
from orchestrator.tune import (
    Group,
    chosen_rows,
    corner,
    corner_values,
    parse_constraints,
    parse_sampler,
    parse_scheduler,
    parse_space,
)

StageKind = Literal["grid", "tune", "transfer"]


def match_value(params: dict[str, Any], keys: list[str]) -> tuple[Any, ...]:
    """The values of `keys` in `params`, as compared when matching runs to upstream runs."""
    return tuple(param_column(params.get(k)) for k in keys)


@dataclass
class StagePlan:
    sweep: str
    name: str
    kind: StageKind
    stage: Stage
    task: TaskDef
    resources: Resources
    space: ParamSpace
    loaded: LoadedSpec
    needs: list[str] = field(default_factory=list)
    match_keys: dict[str, list[str]] = field(default_factory=dict)  # need -> parameters both stages set
    runs: Mapping[str, Run] = field(default_factory=dict)  # grid: distinct runs by id, in spec order
    points: int = 0  # grid: points expanded (runs + merged duplicates)
    linked: bool = False  # grid: runs (and their ids) are known
    distributions: dict[str, Any] = field(default_factory=dict)  # tune
    constraints: list[Constraint] = field(default_factory=list)  # tune
    groups: list[Group] = field(default_factory=list)  # tune
    sampler: tuple[str, dict[str, Any]] = ("tpe", {})  # tune: optuna sampler name and options
    scheduler: tuple[str, dict[str, Any]] | None = None  # tune: early stopping (pruner) and its options
    source_tune: Any = None  # transfer: the TuneSpec of the stage it transfers from
    overlay: list[dict[str, Any]] = field(default_factory=list)  # transfer: its own params, expanded

    def path(self, *keys: str | int) -> KeyPath:
        return ("stages", self.name, *keys)

    @property
    def duplicates(self) -> int:
        return self.points - len(self.runs)

    @property
    def execution(self) -> StageExecution:
        return StageExecution(self.task, self.resources, self.stage.retries, self.stage.max_workers,
                              self.stage.timeout_s)

    @property
    def expected(self) -> int | None:
        """Runs of a tune stage (trials per group x groups), or a linked grid stage; else None."""
        if self.kind == "tune":
            return len(self.groups) * self.stage.tune.num_samples  # type: ignore[union-attr]
        return len(self.runs) if self.kind == "grid" and self.linked else None

    def make_run(self, params: dict[str, Any], upstream: dict[str, tuple[str, ...]] | None = None,
                 selected_from: str | None = None, selected_by: str | None = None) -> Run:
        """Validate `params` against the task's model and address the run by its lineage."""
        return self.address(self.validate(params), upstream, selected_from, selected_by)

    def address(self, validated: dict[str, Any], upstream: dict[str, tuple[str, ...]] | None = None,
                selected_from: str | None = None, selected_by: str | None = None) -> Run:
        """The run of already validated params, addressed by its lineage."""
        upstream = upstream or {}
        ids = [i for group in upstream.values() for i in group]
        return Run(self.sweep, self.name, self.task.name, self.task.target, self.task.version, validated,
                   make_run_id(self.task.name, self.task.version, validated, ids, selected_from),
                   upstream, selected_from, selected_by)

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        model = self.task.params
        try:
            validated: dict[str, Any] = model.model_validate(params).model_dump(mode="json")
            return validated
        except ValidationError as exc:
            raise self._param_error(exc) from None

    def _param_error(self, exc: ValidationError) -> SpecError:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        known = sorted(self.task.params.model_fields)
        owner = self.space.owners.get(name)
        path = self.path("params", owner) if owner else self.path("params")
        source = self.loaded.source
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return source.error(path, f"unknown parameter '{name}' for task {self.task.name}",
                                hint=f"{hint}known: {', '.join(known)}")
        if error["type"] == "missing":
            return source.error(self.path("params"), f"missing required parameter '{name}' for task {self.task.name}")
        where = ".".join(str(p) for p in error["loc"])
        return source.error(path, f"parameter '{where}' of task {self.task.name}: {error['msg']}, "
                                  f"got {error.get('input')!r}")

    def link(self, upstream: dict[str, Iterable[Run]]) -> None:
        """Expand the grid, matching each point to the upstream runs it reads; distinct runs only.

        `upstream`: every need's runs. A point that matches no run of a need is a spec error. A stage that
        `product_runs` can plan exactly is planned by it: its axes are validated, not its points.
        """
        product = None if self.needs else product_runs(self.space, self.task.params, self.check_point, self.address)
        if product is not None:
            self.runs, self.points, self.linked = product, product.points, True
            return
        self.runs, self.points = self.runs_point_by_point(upstream)
        self.linked = True

    def check_point(self, params: dict[str, Any]) -> Run:
        """A point validated in full, as `runs_point_by_point` validates each (a SpecError if invalid)."""
        return self.make_run(self.validate(params))

    def runs_point_by_point(self, upstream: dict[str, Iterable[Run]]) -> tuple[dict[str, Run], int]:
        """The distinct runs and the number of points, each point validated in full against the model."""
        tables: dict[str, dict[tuple[Any, ...], list[str]]] = {}
        for need in self.needs:
            table: dict[tuple[Any, ...], list[str]] = {}
            for run in upstream[need]:
                table.setdefault(match_value(run.params, self.match_keys[need]), []).append(run.run_id)
            tables[need] = table
        runs: dict[str, Run] = {}
        points = 0
        for params in self.space:
            points += 1
            validated = self.validate(params)
            links: dict[str, tuple[str, ...]] = {}
            for need, table in tables.items():
                keys = self.match_keys[need]
                found = table.get(match_value(validated, keys))
                if not found:
                    shown = {k: validated.get(k) for k in keys}
                    raise self.loaded.source.error(
                        self.path("needs"),
                        f"a run with {shown} matches no run of stage '{need}' "
                        f"(runs are matched on the parameters both stages set: {', '.join(keys) or 'none'})",
                    )
                links[need] = tuple(sorted(set(found)))
            run = self.make_run(validated, links)
            runs.setdefault(run.run_id, run)
        if points == 0:
            raise self.loaded.source.error(self.path("params"), "the stage expands to no runs")
        return runs, points

    def transfer_runs(self, best: list[dict[str, Any]]) -> list[Run]:
        """Each feasible group's selected config(s) with this stage's params laid over them (distinct runs);
        from a multi-objective stage, the front points its `select:` rule takes."""
        runs: dict[str, Run] = {}
        tune = self.source_tune
        for row, rule in chosen_rows(best, self.stage.select, tune.metrics, tune.modes):
            chosen = json.loads(row["best_params"])
            for extra in self.overlay:
                run = self.make_run({**chosen, **extra}, selected_from=row["best_run_id"], selected_by=rule)
                runs.setdefault(run.run_id, run)
        return list(runs.values())


@dataclass
class SweepPlan:
    loaded: LoadedSpec
    order: list[str]
    stages: dict[str, StagePlan]

    @property
    def name(self) -> str:
        return self.loaded.name

    def counts(self) -> dict[str, int]:
        """Runs per grid or tune stage known from the spec alone (transfer stages: after selection)."""
        return {name: n for name, stage in self.stages.items() if (n := stage.expected) is not None}

    def task_targets(self) -> list[str]:
        return sorted({plan.task.target for plan in self.stages.values()})


def build_plan(loaded: LoadedSpec) -> SweepPlan:
    """Resolve every stage's task, parse its parameters, and expand and validate what can be known now."""
    order = stage_order(loaded)
    stages: dict[str, StagePlan] = {}
    for name in order:
        plan = _stage_plan(loaded, name)
        stages[name] = plan
        for need in plan.needs:
            mine = plan.space.declared_keys()
            theirs = set(stages[need].space.declared_keys())
            plan.match_keys[need] = [k for k in mine if k in theirs]
        if plan.kind == "tune":
            _plan_tune(plan)
        elif plan.kind == "transfer":
            plan.overlay = list(parse_params(plan.stage.params, loaded.source, plan.path("params")))
            plan.source_tune = loaded.spec.stages[str(plan.stage.transfer)].tune
            _check_select(plan)
        elif all(stages[need].kind == "grid" and stages[need].linked for need in plan.needs):
            plan.link({need: stages[need].runs.values() for need in plan.needs})
    return SweepPlan(loaded, order, stages)


def _stage_plan(loaded: LoadedSpec, name: str) -> StagePlan:
    """A stage's task (a transfer stage uses its source's) and parsed parameters."""
    stage = loaded.spec.stages[name]
    source_stage = loaded.spec.stages[stage.transfer] if stage.transfer else stage
    key: KeyPath = ("stages", name if stage.task else str(stage.transfer), "task")
    try:
        task = get_task(str(source_stage.task))
    except UnknownTaskError as exc:
        raise loaded.source.error(key, str(exc)) from None
    params = {**source_stage.params, **stage.params} if stage.transfer else dict(stage.params)
    for param, value in params.items():
        owner = name if param in stage.params else str(stage.transfer)
        if ("stages", owner, "params", param) in loaded.source.override_lists and not _holds_lists(task, param, value):
            params[param] = {"grid": value}
    resources = stage.resources or source_stage.resources
    if resources is None:
        try:
            resources = Resources.model_validate(task.resources)
        except ValidationError as exc:
            raise SpecError(f"task {task.name} declares invalid default resources: {exc}") from None
    kind: StageKind = "tune" if stage.tune is not None else "transfer" if stage.transfer else "grid"
    space = parse_params(params, loaded.source, ("stages", name, "params"))
    check_run_limit(space, loaded.spec.max_runs or DEFAULT_MAX_RUNS)
    return StagePlan(loaded.spec.name, name, kind, stage, task, resources, space, loaded, list(stage.needs))


def _holds_lists(task: TaskDef, key: str, value: list[Any]) -> bool:
    """Whether parameter `key` of `task` takes `value` as one list (else a list override is a grid of it)."""
    info = task.params.model_fields.get(key)
    if info is None or info.annotation is None:
        return False
    try:
        TypeAdapter(info.annotation).validate_python(value)
    except ValidationError:
        return False
    return True


def _check_select(plan: StagePlan) -> None:
    """A transfer's `select:` names `front` or one of its tune stage's metrics, and needs several."""
    select, tune = plan.stage.select, plan.source_tune
    if select is None:
        return
    if not tune.multi:
        raise plan.loaded.source.error(plan.path("select"), f"stage '{plan.stage.transfer}' tunes one metric "
                                       f"({tune.metrics[0]}): there is no front to select from",
                                       hint="drop `select`")
    if select != "front" and select not in tune.metrics:
        raise plan.loaded.source.error(plan.path("select"), f"select '{select}' is neither `front` nor a metric "
                                       f"of stage '{plan.stage.transfer}'",
                                       hint=f"choose front or one of {', '.join(tune.metrics)}")


def _plan_tune(plan: StagePlan) -> None:
    """Groups, search space and constraints; every corner of the space must be a valid run."""
    tune = plan.stage.tune
    assert tune is not None
    source = plan.loaded.source
    for i, key in enumerate(tune.group_by):
        if key not in plan.task.params.model_fields:
            raise source.error(plan.path("tune", "group_by", i), f"'{key}' is not a parameter of task {plan.task.name}")
    for key in tune.space:
        if key not in plan.task.params.model_fields:
            raise source.error(plan.path("tune", "space", key), f"'{key}' is not a parameter of task {plan.task.name}")
        if source.lines.get(plan.path("params", key)) == 0:
            raise source.error(plan.path("params", key), f"this override would have no effect: tune.space sets "
                               f"'{key}' for every trial", hint=f"change the search range instead: "
                               f"'stages.{plan.name}.tune.space.{key}=...'")
    plan.distributions = parse_space(tune.space, source, plan.path("tune", "space"))
    plan.constraints = parse_constraints(tune.constraints, source, plan.path("tune", "constraints"))
    plan.sampler = parse_sampler(tune, plan.distributions, source, plan.path("tune", "sampler"))
    plan.scheduler = parse_scheduler(tune, source, plan.path("tune", "scheduler"))
    groups: dict[str, Group] = {}
    for params in plan.space:
        for key in tune.space:
            params.pop(key, None)
        group_key = {k: params.get(k) for k in tune.group_by}
        label = canonical_json(group_key)
        if label in groups and groups[label].base != params:
            varying = sorted(k for k in params if params[k] != groups[label].base.get(k))
            raise source.error(plan.path("params"), f"parameter(s) {', '.join(varying)} vary inside a tune group",
                               hint="add them to tune.group_by")
        groups[label] = Group(group_key, params)
    plan.groups = list(groups.values())
    for group in plan.groups:
        corners = {k: corner(d) for k, d in plan.distributions.items()}
        for name, distribution in plan.distributions.items():
            for value in corner_values(distribution):
                plan.validate({**group.base, **corners, name: value})
