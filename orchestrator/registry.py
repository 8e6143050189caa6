"""Task registration and lookup: built-in families, installed packages, and any `module:function`.

The one registry of the task families: each family package under `tasks/` declares, in its cheap
`__init__.py`, `TASKS` (task name -> "module:function"), optionally `REPORTS` (task name -> report hook)
and `MODELS` (built-in model name -> "module:function" returning the model's local directory). One walk
of the package reads all three (`family_maps`); a name declared twice across families is refused.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    setup_upstream: bool = False  # the setup reads the run's upstream artifacts (a model a stage trained)
    resources: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    smoke: dict[str, Any] | None = None
    smoke_upstream: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    measured: tuple[str, ...] = ()  # columns that measure the call itself (wall-clock times): not reproducible

    def setup_key(
        self, params: dict[str, Any], upstream: Mapping[str, Iterable[str]] | None = None
    ) -> tuple[Any, ...] | None:
        """The values that identify this run's expensive setup, or None for a stateless task.

        With `setup_upstream`, the ids of the upstream runs (stage -> run ids) are part of the key: two
        runs with the same params but another upstream model never share a loaded setup.
        """
        if self.setup is None:
            return None
        key = tuple((k, _hashable(params.get(k))) for k in self.setup_keys)
        if self.setup_upstream and upstream:
            key += (("upstream", tuple(sorted((stage, tuple(sorted(ids))) for stage, ids in upstream.items()))),)
        return key


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
    setup_upstream: bool = False,
    resources: dict[str, Any] | None = None,
    smoke: Mapping[str, Any] | None = None,
    smoke_upstream: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    measured: Sequence[str] = (),
) -> Callable[[TaskFn], TaskFn]:
    """Register `fn(params, ctx) -> rows` under `name`.

    `version`: bump when the task's meaning changes, so old rows stay distinguishable (it enters run ids).
    `setup(params, ctx)`: expensive state (a model) built once per worker for each distinct value of
    `setup_keys` and handed to the task as `ctx.setup`; `setup_upstream=True` when the setup also reads
    the run's upstream artifacts (`ctx.upstream`, a model saved by an earlier stage): the upstream run ids
    then join the key.
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
            setup_upstream=setup_upstream,
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


FAMILY_MAPS = ("TASKS", "REPORTS", "MODELS")


@cache
def family_maps(package_name: str | None = None) -> dict[str, dict[str, TaskEntry]]:
    """The `TASKS`, `REPORTS` and `MODELS` maps of every family package under `package_name`
    (default `tasks`), merged per kind, each entry with its family as origin. One walk, imports only the
    families' `__init__.py`. A name declared by two families (in the same kind of map) is refused."""
    package = importlib.import_module(package_name or TASK_PACKAGE)
    maps: dict[str, dict[str, TaskEntry]] = {kind: {} for kind in FAMILY_MAPS}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        family = f"{package.__name__}.{info.name}"
        module = importlib.import_module(family)
        for kind in FAMILY_MAPS:
            for name, target in getattr(module, kind, {}).items():
                _add(maps[kind], TaskEntry(name, target, family), kind)
    for name, entry in maps["REPORTS"].items():
        if name not in maps["TASKS"]:
            raise UnknownTaskError(f"{entry.origin} declares a report for '{name}', which no family registers")
    return maps


def _add(entries: dict[str, TaskEntry], entry: TaskEntry, kind: str = "TASKS") -> None:
    known = entries.get(entry.name)
    if known is not None:
        what = {"TASKS": "task", "REPORTS": "report for task", "MODELS": "built-in model"}[kind]
        raise UnknownTaskError(
            f"{what} name '{entry.name}' is registered twice: by {known.origin} ({known.target}) and by "
            f"{entry.origin} ({entry.target}); rename one"
        )
    entries[entry.name] = entry


@cache
def task_entries() -> dict[str, TaskEntry]:
    """Every registered task name: the built-in families' `TASKS` maps, then installed entry points."""
    entries = dict(family_maps(TASK_PACKAGE)["TASKS"])
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = point.dist.name if point.dist is not None else "an installed package"
        _add(entries, TaskEntry(point.name, point.value, f"entry point of {distribution}"))
    return entries


def report_map() -> dict[str, str]:
    """Task name -> "module:function" of its report hook, `function(df, out_dir) -> list` (orchestrator.report)."""
    return {name: entry.target for name, entry in family_maps(TASK_PACKAGE)["REPORTS"].items()}


def model_map() -> dict[str, str]:
    """Built-in model name -> "module:function" that returns its local directory (built on first use)."""
    return {name: entry.target for name, entry in family_maps(TASK_PACKAGE)["MODELS"].items()}


def import_target(target: str) -> Any:
    """The object a "module:attr" (attr may be dotted) names."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UnknownTaskError(f"'{target}' is not of the form module:function")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def task_map() -> dict[str, str]:
    """Every registered task name -> "module:attr"."""
    return {name: entry.target for name, entry in task_entries().items()}


@cache
def resolve_target(target: str) -> TaskDef:
    """Import "module:attr" and return its TaskDef (the attr must be decorated with @task)."""
    try:
        fn = import_target(target)
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
