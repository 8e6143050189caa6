"""Sweep specs: safe YAML with line numbers, Hydra-style overrides, and typed validation.

Every error names the file, the line, the key path and the reason (`SpecError`).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import SpecError

KeyPath = tuple[str | int, ...]
OVERRIDE_FILE = "<command line>"


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class SpecSource:
    """Where a spec came from: file name and the line of every key path (for error messages)."""

    file: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    override_lists: set[KeyPath] = field(default_factory=set)  # parameters an override set to a list (a sweep)

    def line(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def error(self, path: KeyPath, reason: str, hint: str | None = None) -> SpecError:
        """A SpecError at `path`: at its line, or at `<command line>` when an override set it or an ancestor."""
        line = self.line(path)
        file = OVERRIDE_FILE if line == 0 else self.file
        return SpecError(reason, file=file, line=line or None, key=format_path(path) or None, hint=hint)

    def set_by_override(self, path: KeyPath) -> None:
        """`path` now holds a value from the command line: forget the spec lines of what it replaced."""
        for stale in [known for known in self.lines if known[: len(path)] == path]:
            del self.lines[stale]
        self.lines[path] = 0


# ---------------------------------------------------------------- YAML with lines

MAX_SPEC_BYTES = 256 * 1024
"""Largest spec file (256 KiB): a bigger one is refused before parsing. 256 KiB of plain text is some 80,000
YAML nodes, seconds of work for the pure-Python parser; a real spec is a few KiB."""
MAX_YAML_NODES = 1_000_000
"""Most YAML nodes a spec or an override value may hold, counted while composing; an alias counts as every
node it repeats, so an alias bomb is refused as soon as its expansion passes the limit."""
MAX_YAML_DEPTH = 100
"""Deepest nesting of mappings and sequences in a spec or an override value."""

PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, composing under the MAX_YAML_NODES and MAX_YAML_DEPTH budget."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.weight = 0  # nodes composed so far, each alias counting the nodes it repeats
        self.depth = 0
        self.anchor_weights: dict[str, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.NodeEvent = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            anchor = str(event.anchor)
            if anchor in self.anchors and anchor not in self.anchor_weights:
                raise self._refuse(event, f"alias *{anchor} is inside the node it refers to")
            node = super().compose_node(parent, index)
            self._count(self.anchor_weights[anchor], event)
            return node
        if self.depth == MAX_YAML_DEPTH:
            raise self._refuse(event, f"nesting deeper than {MAX_YAML_DEPTH} levels")
        before = self.weight
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        self._count(1, event)
        if event.anchor is not None:
            self.anchor_weights[event.anchor] = self.weight - before
        return node

    def _count(self, nodes: int, event: yaml.Event) -> None:
        self.weight += nodes
        if self.weight > MAX_YAML_NODES:
            raise self._refuse(
                event, f"more than {MAX_YAML_NODES:,} YAML nodes (an alias counts every node it repeats): refused"
            )

    def _refuse(self, event: yaml.Event, reason: str) -> SpecError:
        line = event.start_mark.line + 1 if event.start_mark else None
        return SpecError(f"invalid YAML: {reason}", file=self.file, line=line)


def _to_python(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, source: SpecSource) -> Any:
    source.lines.setdefault(path, node.start_mark.line + 1)
    if len(path) == MAX_YAML_DEPTH:  # reached through aliases: the composer saw each level on its own
        raise SpecError(f"invalid YAML: nesting deeper than {MAX_YAML_DEPTH} levels", file=source.file,
                        line=node.start_mark.line + 1)
    if not isinstance(node, yaml.ScalarNode) and node.tag not in PLAIN_TAGS:
        raise SpecError(f"invalid YAML: tag {node.tag} is not allowed (specs hold plain data only)",
                        file=source.file, line=node.start_mark.line + 1, key=format_path(path) or None)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "dict" if isinstance(key_node, yaml.MappingNode) else "list"
                raise source.error(path, f"mapping keys must be scalars, got {kind}")
            key = loader.construct_object(key_node)
            if not isinstance(key, (str, int, float, bool)):
                raise source.error(path, f"mapping keys must be scalars, got {type(key).__name__}")
            key = str(key)
            if key in result:
                raise SpecError(
                    f"duplicate key '{key}' (first at line {source.lines[(*path, key)]})",
                    file=source.file,
                    line=key_node.start_mark.line + 1,
                    key=format_path((*path, key)),
                )
            source.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _to_python(loader, value_node, (*path, key), source)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(loader, item, (*path, i), source) for i, item in enumerate(node.value)]
    return loader.construct_object(node)


def load_yaml(text: str, file: str) -> tuple[Any, SpecSource]:
    """Parse YAML with the safe loader, refusing duplicate keys and documents past MAX_YAML_NODES or
    MAX_YAML_DEPTH; returns the data (None for an empty document) and its line map."""
    source = SpecSource(file)
    loader = _BoundedLoader(text, file)
    try:
        node = loader.get_single_node()
        return (None if node is None else _to_python(loader, node, (), source)), source
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(filter(None, [exc.context, exc.problem]))
        raise SpecError(f"invalid YAML: {reason}", file=file, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """Per-run reservation. Ray only schedules by `memory`; the orchestrator also enforces it per run."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: ByteSize | None = None
    accelerator_type: str | None = None
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"num_gpus above 1 must be a whole number, got num_gpus={value}")
        return value

    @field_validator("custom")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if amount < 0:
                raise ValueError(f"custom resource '{name}' must be >= 0, got {amount}")
        return value

    def describe(self) -> str:
        parts = [f"cpu={self.num_cpus:g}"]
        if self.num_gpus:
            parts.append(f"gpu={self.num_gpus:g}")
        if self.memory:
            parts.append(f"mem={self.memory.human_readable()}")
        if self.accelerator_type:
            parts.append(self.accelerator_type)
        parts += [f"{k}={v:g}" for k, v in self.custom.items()]
        return " ".join(parts)


class Retries(_Strict):
    """`system`: retries after a worker/node death or OOM kill; `errors`: after an exception in the task."""

    system: int = Field(default=3, ge=0)
    errors: int = Field(default=0, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)


Mode = Literal["min", "max"]


class TuneSpec(_Strict):
    """Search on this stage's split: one Optuna study per `group_by` group (tune.py).

    `metric`/`mode`: one metric, or a list with one mode each (multi-objective: a Pareto front).
    `sampler`: an Optuna sampler by name, or `{type: name, option: value, ...}` (tune.SAMPLERS).
    `scheduler`: early stopping on `ctx.report`, `{type: asha | median | hyperband, ...}` (tune.SCHEDULERS).
    """

    metric: str | list[str]
    mode: Mode | list[Mode]
    space: dict[str, Any] = Field(min_length=1)
    num_samples: int = Field(10, ge=1)
    group_by: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    max_concurrent: int | None = Field(None, ge=1)
    seed: int = 0
    sampler: str | dict[str, Any] = "tpe"
    scheduler: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _metrics_and_modes(self) -> TuneSpec:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        if not metrics:
            raise ValueError("tune.metric: give a metric or a non-empty list of metrics")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"tune.metric names a metric twice: {metrics}")
        if isinstance(self.metric, list) != isinstance(self.mode, list) or len(metrics) != len(modes):
            raise ValueError(f"tune.mode needs one mode per metric: metric={self.metric!r}, mode={self.mode!r}")
        return self

    @property
    def metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return list(self.mode) if isinstance(self.mode, list) else [self.mode]

    @property
    def multi(self) -> bool:
        """Several objectives: the group's Pareto front is selected, not one best trial."""
        return isinstance(self.metric, list) and len(self.metric) > 1


class Stage(_Strict):
    task: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    resources: Resources | None = None
    retries: Retries = Field(default_factory=Retries)
    needs: list[str] = Field(default_factory=list)
    tune: TuneSpec | None = None
    transfer: str | None = None
    select: str | None = None  # transfer from a multi-objective tune: `front`, or a metric to optimise on it
    max_workers: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)  # per run; a run past it is stopped, stored as `timeout`

    @model_validator(mode="after")
    def _task_or_transfer(self) -> Stage:
        if self.task is None and self.transfer is None:
            raise ValueError("a stage needs either `task` or `transfer`")
        if self.transfer is not None and self.tune is not None:
            raise ValueError("a `transfer` stage cannot also `tune`")
        if self.select is not None and self.transfer is None:
            raise ValueError("`select` chooses among a tune stage's Pareto front: it goes with `transfer`")
        return self


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# the results store's folders beside the stages
RESERVED_STAGE_NAMES = ("artifacts", "report", "specs", "logs", "tracking")


class TrackingSpec(_Strict):
    """Mirror each stored run into experiment trackers (`run --track` adds to `backends`)."""

    backends: list[Literal["mlflow", "tensorboard", "wandb"]] = Field(default_factory=list)
    dir: str | None = None  # TensorBoard event files, W&B run files [<results>/<sweep>/tracking]
    experiment: str | None = None  # MLflow experiment, W&B project [the sweep's name]


class SweepSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    results: str | None = None
    max_runs: int | None = Field(None, ge=1)  # runs per stage above which `plan` refuses (default 1,000,000)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    stages: dict[str, Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, stages: dict[str, Stage]) -> dict[str, Stage]:
        for name in stages:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"stage name '{name}' must match {NAME_PATTERN}")
            if name in RESERVED_STAGE_NAMES:
                raise ValueError(f"stage name '{name}' is the name of a folder of the results store "
                                 f"({', '.join(RESERVED_STAGE_NAMES)}); rename the stage")
        return stages


@dataclass
class LoadedSpec:
    """A validated spec and where it came from."""

    spec: SweepSpec
    source: SpecSource
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


# ---------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as a YAML scalar or flow collection).

    Hydra's sweep syntax `a=1,2,3` (a comma outside brackets, braces and quotes) parses to the list [1, 2, 3].
    """
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override '{text}' is not of the form key.path=value", file=OVERRIDE_FILE)
    if not value.strip():
        return key.split("."), ""
    if _is_comma_list(value):
        value = f"[{value}]"
    try:
        parsed, _ = load_yaml(value, OVERRIDE_FILE)
    except SpecError as exc:
        raise SpecError(f"override value '{value}': {exc.reason}", file=OVERRIDE_FILE, key=key) from None
    return key.split("."), parsed


def _is_comma_list(value: str) -> bool:
    """`1,2` or `a, b`: a comma at the top level of a value that is not a flow collection or a quoted string."""
    stripped = value.strip()
    return "," in stripped and stripped[0] not in "[{\"'" and not any(c in stripped for c in "[]{}\"'")


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: SpecSource) -> None:
    """Hydra-style `key.path=value` overrides, in place; errors inside what they set name `<command line>`.

    A path that starts at a top-level spec key (`name`, `stages`, ...) is applied as written. A bare
    parameter name (`lr=0.1`, `model=tiny-gpt2`) sets that parameter in every stage that declares it.
    A list given to a parameter (`y=[1,2]`, Hydra's `y=1,2`) is recorded in `source.override_lists`: the
    plan sweeps it as a grid unless the parameter itself holds lists.
    """
    for text in overrides:
        keys, value = parse_override(text)
        targets: list[list[str]]
        if keys[0] in SweepSpec.model_fields:
            targets = [keys]
        else:
            stages = raw.get("stages") or {}
            targets = [
                ["stages", stage, "params", *keys]
                for stage, body in stages.items()
                if isinstance(body, dict) and keys[0] in (body.get("params") or {})
            ]
            if not targets:
                searched = [stage for stage, body in stages.items() if isinstance(body, dict)
                            and keys[0] in ((body.get("tune") or {}).get("space") or {})]
                if searched:
                    raise SpecError(
                        f"override '{text}' would have no effect: stage '{searched[0]}' searches '{keys[0]}' "
                        f"(tune.space sets it for every trial)", file=OVERRIDE_FILE,
                        hint=f"change the search range instead: 'stages.{searched[0]}.tune.space.{keys[0]}=...'")
                raise SpecError(
                    f"override '{text}' matches no spec key and no stage parameter named '{keys[0]}'",
                    file=OVERRIDE_FILE,
                )
        for path in targets:
            node = raw
            for depth, part in enumerate(path[:-1]):
                if part not in node:  # a mapping the override creates (a new stage, say)
                    source.set_by_override(tuple(path[: depth + 1]))
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    raise SpecError(
                        f"override '{text}': '{part}' is not a mapping", file=OVERRIDE_FILE, key=".".join(path)
                    )
                node = child
            node[path[-1]] = value
            source.set_by_override(tuple(path))
            if isinstance(value, list) and len(path) == 4 and path[0] == "stages" and path[2] == "params":
                source.override_lists.add(tuple(path))


# ---------------------------------------------------------------- loading


def _validation_error(exc: ValidationError, source: SpecSource) -> SpecError:
    errors = exc.errors()
    # An unknown key is often a misspelt required one (`stagez:` for `stages:`): it explains the rest, so first.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    message, hint = first["msg"], None
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{path[-1]}'"
        close = difflib.get_close_matches(str(path[-1]), _keys_at(path[:-1]), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
    elif first["type"] == "missing":
        message = f"missing required key '{path[-1]}'"
    elif first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    else:
        message = f"{message}, got {first.get('input')!r}"
    return source.error(path, message, hint=hint)


def _keys_at(path: KeyPath) -> list[str]:
    """The keys the spec model accepts in the mapping at `path` (none where that is not a model)."""
    kind: Any = SweepSpec
    for part in path:
        if isinstance(kind, type) and issubclass(kind, BaseModel) and str(part) in kind.model_fields:
            kind = kind.model_fields[str(part)].annotation
        elif typing.get_origin(kind) in (dict, list):  # a stage name or a list index
            kind = typing.get_args(kind)[-1]
        else:
            return []
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `Resources | None`
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
    """Read, override and validate a sweep spec (structure only; params are checked by `expand`)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(f"the spec is larger than {MAX_SPEC_BYTES:,} bytes: refused", file=str(path))
        text = data.decode()
    except FileNotFoundError:
        raise SpecError("spec file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec: {exc}", file=str(path)) from None
    raw, source = load_yaml(text, str(path))
    if raw is None:
        raise SpecError("the spec is empty", file=str(path), line=1)
    if not isinstance(raw, dict):
        raise SpecError(f"the spec must be a mapping, got {type(raw).__name__}", file=str(path), line=1)
    apply_overrides(raw, overrides or [], source)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, source) from None
    loaded = LoadedSpec(spec, source, raw)
    check_stage_graph(loaded)
    return loaded


def check_stage_graph(loaded: LoadedSpec) -> None:
    """`needs` and `transfer` name existing stages and form no cycle."""
    stages = loaded.spec.stages
    for name, stage in stages.items():
        for i, need in enumerate(stage.needs):
            if need not in stages:
                raise loaded.source.error(("stages", name, "needs", i), f"unknown stage '{need}'")
            if need == name:
                raise loaded.source.error(("stages", name, "needs", i), "a stage cannot need itself")
        if stage.transfer is not None:
            source_stage = stages.get(stage.transfer)
            if source_stage is None:
                raise loaded.source.error(("stages", name, "transfer"), f"unknown stage '{stage.transfer}'")
            if source_stage.tune is None:
                raise loaded.source.error(
                    ("stages", name, "transfer"), f"stage '{stage.transfer}' has no `tune:` block to transfer from"
                )
    stage_order(loaded)


def stage_dependencies(stage: Stage) -> list[str]:
    return list(stage.needs) + ([stage.transfer] if stage.transfer else [])


def stage_order(loaded: LoadedSpec) -> list[str]:
    """Stages in dependency order (declaration order among independent ones); refuses cycles."""
    stages = loaded.spec.stages
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise loaded.source.error(("stages", name, "needs"), f"cycle in stage dependencies: {cycle}")
        state[name] = "active"
        for dep in stage_dependencies(stages[name]):
            visit(dep, [*trail, name])
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, [])
    return order
