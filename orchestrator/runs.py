"""Runs: a task, validated parameters and resources, addressed by content.

`run_id` = sha256 of (task name, task version, canonical validated parameters), so the same run has the
same id in any process, on any machine, in any sweep: finished runs are never recomputed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import SpecError, UnknownTaskError
from orchestrator.expand import ParamSpace, parse_params
from orchestrator.registry import TaskDef, get_task
from orchestrator.spec import LoadedSpec, Resources, Stage

RUN_ID_LENGTH = 16


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def make_run_id(task: str, version: int, params: dict[str, Any]) -> str:
    payload = canonical_json({"task": task, "version": version, "params": params})
    return hashlib.sha256(payload.encode()).hexdigest()[:RUN_ID_LENGTH]


def seed_from_run_id(run_id: str) -> int:
    """The run's seed when its task has no `seed` parameter: 31 bits of its id."""
    return int(run_id[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class Run:
    sweep: str
    stage: str
    task: str
    task_version: int
    params: dict[str, Any]
    run_id: str

    @property
    def seed(self) -> int:
        seed = self.params.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else seed_from_run_id(self.run_id)


@dataclass
class StagePlan:
    """A stage ready to expand: its task, parameter space and resources."""

    sweep: str
    name: str
    stage: Stage
    task: TaskDef
    space: ParamSpace
    resources: Resources
    loaded: LoadedSpec

    def path(self, *keys: str | int) -> tuple[str | int, ...]:
        return ("stages", self.name, *keys)

    def runs(self, extra: dict[str, Any] | None = None) -> Iterator[Run]:
        """Every run of the stage, validated against the task's parameter model, lazily."""
        for params in self.space:
            yield self.make_run({**params, **(extra or {})})

    def make_run(self, params: dict[str, Any]) -> Run:
        validated = validate_params(self, params)
        return Run(
            sweep=self.sweep,
            stage=self.name,
            task=self.task.name,
            task_version=self.task.version,
            params=validated,
            run_id=make_run_id(self.task.name, self.task.version, validated),
        )


def _param_path(plan: StagePlan, field: str) -> tuple[str | int, ...]:
    owner = plan.space.owners.get(field)
    return plan.path("params", owner) if owner else plan.path("params")


def validate_params(plan: StagePlan, params: dict[str, Any]) -> dict[str, Any]:
    model = plan.task.params
    try:
        return model.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        known = sorted(model.model_fields)
        source = plan.loaded.source
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise source.error(
                _param_path(plan, field),
                f"unknown parameter '{field}' for task {plan.task.name}",
                hint=f"{hint}known: {', '.join(known)}",
            ) from None
        if error["type"] == "missing":
            raise source.error(
                plan.path("params"), f"missing required parameter '{field}' for task {plan.task.name}"
            ) from None
        where = ".".join(str(p) for p in error["loc"])
        raise source.error(
            _param_path(plan, field),
            f"parameter '{where}' of task {plan.task.name}: {error['msg']}, got {error.get('input')!r}",
        ) from None


def stage_plan(loaded: LoadedSpec, name: str) -> StagePlan:
    """Resolve a stage's task (a transfer stage uses its source's) and parse its parameters."""
    stage = loaded.spec.stages[name]
    task_name = stage.task or loaded.spec.stages[stage.transfer].task  # type: ignore[index]
    key = ("stages", name, "task") if stage.task else ("stages", stage.transfer, "task")
    try:
        task = get_task(task_name)  # type: ignore[arg-type]
    except UnknownTaskError as exc:
        raise loaded.source.error(key, str(exc)) from None
    if stage.transfer:
        source_stage = loaded.spec.stages[stage.transfer]
        params = {**source_stage.params, **stage.params}
        resources = stage.resources or source_stage.resources
    else:
        params = dict(stage.params)
        resources = stage.resources
    if stage.tune is not None:
        for i, key_name in enumerate(stage.tune.group_by):
            if key_name not in task.params.model_fields:
                raise loaded.source.error(
                    ("stages", name, "tune", "group_by", i), f"'{key_name}' is not a parameter of task {task.name}"
                )
        for key_name in stage.tune.space:
            if key_name not in task.params.model_fields:
                raise loaded.source.error(
                    ("stages", name, "tune", "space", key_name), f"'{key_name}' is not a parameter of task {task.name}"
                )
    if resources is None:
        try:
            resources = Resources.model_validate(task.resources)
        except ValidationError as exc:
            raise SpecError(f"task {task.name} declares invalid default resources: {exc}") from None
    space = parse_params(params, loaded.source, ("stages", name, "params"))
    return StagePlan(loaded.spec.name, name, stage, task, space, resources, loaded)


def validate_stage(plan: StagePlan) -> int:
    """Expand and validate every run of a stage (raises the first SpecError); returns the count."""
    count = 0
    for _ in plan.runs():
        count += 1
    if count == 0:
        raise plan.loaded.source.error(plan.path("params"), "the stage expands to no runs")
    return count
