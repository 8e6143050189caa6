"""Task registration and lookup: built-in families, installed packages, and any `module:function`.

A task is a pure function `fn(params, ctx) -> rows` registered with `@task(...)` next to its code.
Names come from three places, all cheap to list (no torch import until a task is looked up):
- each family package under `tasks/` lists its tasks in `TASKS = {"family.name": "module:attr"}`;
- an installed package declares entry points in the group `interp_sweeps.tasks` (`name = "module:attr"`);
- a spec may name `module:function` directly (a module on PYTHONPATH).
Every task carries its import target, which is what workers resolve, so a worker finds exactly the
function the driver planned with. A name registered twice, or a map key that differs from the
`@task` name, is refused.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.context import RunContext
from orchestrator.errors import UnknownTaskError

TASK_PACKAGE = "tasks"
ENTRY_POINT_GROUP = "interp_sweeps.tasks"


class TaskParams(BaseModel):
    """Base for task parameter models: strict about unknown keys, immutable. A docstring under a field (or
    `Field(description=...)`) is its description in `orchestrator tasks NAME`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


Rows = list[dict[str, Any]]
TaskFn = Callable[[Any, RunContext], Any]
SetupFn = Callable[[Any, RunContext], Any]


@dataclass(frozen=True)
class TaskDef:
    """A registered task: its function, parameter model and scheduling hints."""

    name: str
    fn: TaskFn
    params: type[BaseModel]
    target: str  # "module:attr", what a worker imports
    version: int = 1
    setup: SetupFn | None = None
    setup_keys: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    smoke: dict[str, Any] | None = None
    smoke_upstream: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    measured: tuple[str, ...] = ()  # columns that measure the call itself (wall-clock times): not reproducible

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
    smoke: Mapping[str, Any] | None = None,
    smoke_upstream: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    measured: Sequence[str] = (),
) -> Callable[[TaskFn], TaskFn]:
    """Register `fn(params, ctx) -> rows` under `name`.

    `version`: bump when the task's meaning changes, so old rows stay distinguishable (it enters run ids).
    `setup(params, ctx)`: expensive state (a model) built once per worker for each distinct value of
    `setup_keys` and handed to the task as `ctx.setup`.
    `smoke`: small, fast params the contract suite runs the task with (tests/unit/test_task_contract.py);
    `smoke_upstream`: for a task that reads upstream runs, `{stage: (task name, params)}` to run first.
    `measured`: row columns that measure the call itself (wall-clock times, process ids), so identical
    runs may differ in them; every other column must be the same for the same run id.
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
            target=f"{fn.__module__}:{fn.__qualname__}",
            version=version,
            setup=setup,
            setup_keys=tuple(setup_keys),
            resources=dict(resources or {}),
            doc=(fn.__doc__ or "").strip().split("\n")[0],
            smoke=dict(smoke) if smoke is not None else None,
            smoke_upstream={k: (t, dict(p)) for k, (t, p) in (smoke_upstream or {}).items()},
            measured=tuple(measured),
        )
        return fn

    return register


@dataclass(frozen=True)
class TaskEntry:
    """A registered name: its import target and where the name was declared."""

    name: str
    target: str
    origin: str  # "tasks.<family>" or "entry point of <distribution>"


@cache
def task_entries() -> dict[str, TaskEntry]:
    """Every registered task name: the built-in families' `TASKS` maps, then installed entry points."""
    package = importlib.import_module(TASK_PACKAGE)
    entries: dict[str, TaskEntry] = {}

    def add(entry: TaskEntry) -> None:
        known = entries.get(entry.name)
        if known is not None:
            raise UnknownTaskError(
                f"task name '{entry.name}' is registered twice: by {known.origin} ({known.target}) and by "
                f"{entry.origin} ({entry.target}); rename one"
            )
        entries[entry.name] = entry

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.ispkg:
            family = f"{TASK_PACKAGE}.{info.name}"
            for name, target in getattr(importlib.import_module(family), "TASKS", {}).items():
                add(TaskEntry(name, target, family))
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = point.dist.name if point.dist is not None else "an installed package"
        add(TaskEntry(point.name, point.value, f"entry point of {distribution}"))
    return entries


def task_map() -> dict[str, str]:
    """Every registered task name -> "module:attr"."""
    return {name: entry.target for name, entry in task_entries().items()}


@cache
def resolve_target(target: str) -> TaskDef:
    """Import "module:attr" and return its TaskDef (the attr must be decorated with @task)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UnknownTaskError(f"'{target}' is not of the form module:function")
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
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
    entries = task_entries()
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=3, cutoff=0.6)
        hint = f"Did you mean: {', '.join(close)}? " if close else ""
        raise UnknownTaskError(f"unknown task '{name}'. {hint}Available: {', '.join(sorted(entries))}")
    definition = resolve_target(entries[name].target)
    if definition.name != name:
        raise UnknownTaskError(
            f"{entries[name].origin} registers '{name}' as {entries[name].target}, but that function is "
            f"decorated @task('{definition.name}'); make the two names agree"
        )
    return definition
