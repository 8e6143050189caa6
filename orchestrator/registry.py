"""Task registration and lazy lookup.

A task is a pure function `fn(params, ctx) -> rows` registered with `@task(...)` next to its code.
Each family package under `tasks/` lists its tasks in a cheap `TASKS = {"family.name": "module:attr"}`
map, so listing tasks (and `plan`) never imports torch; a task's module is imported on first lookup.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.context import RunContext
from orchestrator.errors import UnknownTaskError

TASK_PACKAGE = "tasks"


class TaskParams(BaseModel):
    """Base for task parameter models: strict about unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Rows = list[dict[str, Any]]
TaskFn = Callable[[Any, RunContext], Any]
SetupFn = Callable[[Any, RunContext], Any]


@dataclass(frozen=True)
class TaskDef:
    """A registered task: its function, parameter model and scheduling hints."""

    name: str
    fn: TaskFn
    params: type[BaseModel]
    version: int = 1
    setup: SetupFn | None = None
    setup_keys: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    def setup_key(self, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The values that identify this run's expensive setup, or None for a stateless task."""
        if self.setup is None:
            return None
        return tuple((k, _hashable(params.get(k))) for k in self.setup_keys)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def task(
    name: str,
    *,
    params: type[BaseModel],
    version: int = 1,
    setup: SetupFn | None = None,
    setup_keys: Sequence[str] = (),
    resources: dict[str, Any] | None = None,
) -> Callable[[TaskFn], TaskFn]:
    """Register `fn(params, ctx) -> rows` under `name`.

    `version`: bump when the task's meaning changes, so old rows stay distinguishable (it enters run ids).
    `setup(params, ctx)`: expensive state (a model) built once per worker for each distinct value of
    `setup_keys` and handed to the task as `ctx.setup`.
    """
    if setup is None and setup_keys:
        raise ValueError(f"task {name}: setup_keys given without a setup function")
    unknown = [k for k in setup_keys if k not in params.model_fields]
    if unknown:
        raise ValueError(f"task {name}: setup_keys {unknown} are not fields of {params.__name__}")

    def register(fn: TaskFn) -> TaskFn:
        fn.__task__ = TaskDef(  # type: ignore[attr-defined]
            name=name,
            fn=fn,
            params=params,
            version=version,
            setup=setup,
            setup_keys=tuple(setup_keys),
            resources=dict(resources or {}),
            doc=(fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return register


@cache
def task_map() -> dict[str, str]:
    """Every registered task name -> "module:attr", read from each family's `TASKS` map."""
    package = importlib.import_module(TASK_PACKAGE)
    names: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        family = importlib.import_module(f"{TASK_PACKAGE}.{info.name}")
        names.update(getattr(family, "TASKS", {}))
    return names


def resolve_target(target: str) -> TaskDef:
    """Import "module:attr" and return its TaskDef (the attr must be decorated with @task)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UnknownTaskError(f"'{target}' is not of the form module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownTaskError(f"cannot import task '{target}': {exc}") from exc
    definition = getattr(fn, "__task__", None)
    if not isinstance(definition, TaskDef):
        raise UnknownTaskError(f"'{target}' is not a registered task (decorate it with @task)")
    return definition


@cache
def get_task(name: str) -> TaskDef:
    """Look a task up by registered name, or by an explicit "module:function" the user wrote."""
    if ":" in name:
        return resolve_target(name)
    names = task_map()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"Did you mean: {', '.join(close)}? " if close else ""
        raise UnknownTaskError(f"unknown task '{name}'. {hint}Available: {', '.join(sorted(names))}")
    return resolve_target(names[name])
