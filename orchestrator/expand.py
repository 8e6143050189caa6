"""Parameter grammar -> a lazy, deterministic stream of parameter dicts.

Forms (the value of a key under `params:`):
- plain value (scalars, lists and mappings that are not one of the forms below)
- `{grid: [a, b, ...]}` an axis; axes multiply, the last declared varies fastest
- `{range: [start, stop, step]}` (stop exclusive; step defaults to 1)
- `{zip: {k1: [...], k2: [...]}}` parallel axis setting k1 and k2 together (equal lengths)
- `{cases: [{k1: .., k2: ..}, ...]}` an axis of parameter bundles merged into the run
- `{when: {other: value | [values]}, then: <form>, else: <form>}` conditional on earlier keys;
  without `else`, the key is left out (the task default applies)
- `"${other}"` references another parameter (keeps its type); `"a-${x}"` interpolates into a string;
  `${m.k}` reads key k of a mapping parameter m.

Expansion knows nothing of tasks or Ray: pure spec in, dicts out.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.spec import KeyPath, SpecSource

FORMS = ("grid", "range", "zip", "cases", "when")
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")


class Entry:
    """One key of `params:`: yields the partial assignments it contributes given earlier keys."""

    keys: tuple[str, ...]

    def choices(self, assigned: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def size(self) -> int | None:
        """Number of choices when it does not depend on other keys, else None."""
        return None


@dataclass
class Fixed(Entry):
    key: str
    values: list[Any]

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def choices(self, assigned: dict[str, Any]) -> list[dict[str, Any]]:
        return [{self.key: v} for v in self.values]

    def size(self) -> int:
        return len(self.values)


@dataclass
class Bundles(Entry):
    keys: tuple[str, ...]
    bundles: list[dict[str, Any]]

    def choices(self, assigned: dict[str, Any]) -> list[dict[str, Any]]:
        return self.bundles

    def size(self) -> int:
        return len(self.bundles)


@dataclass
class Conditional(Entry):
    key: str
    condition: dict[str, list[Any]]
    then: Entry
    otherwise: Entry | None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def choices(self, assigned: dict[str, Any]) -> list[dict[str, Any]]:
        if all(assigned.get(k, _MISSING) in allowed for k, allowed in self.condition.items()):
            return self.then.choices(assigned)
        return self.otherwise.choices(assigned) if self.otherwise else [{}]


_MISSING = object()


def _parse_range(args: Any, source: SpecSource, path: KeyPath) -> list[Any]:
    if isinstance(args, dict):
        args = [args.get("start", 0), args.get("stop"), args.get("step", 1)]
    if not isinstance(args, list) or not 1 <= len(args) <= 3:
        raise source.error(path, "range takes [stop], [start, stop] or [start, stop, step]")
    if len(args) == 1:
        args = [0, args[0]]
    start, stop, step = (args + [1])[:3]
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise source.error(path, f"range {name} must be a number, got {value!r}")
    if step == 0:
        raise source.error(path, "range step must not be 0")
    if all(isinstance(v, int) for v in (start, stop, step)):
        values: list[Any] = list(range(start, stop, step))
    else:
        count = max(0, int(-(-(stop - start) // step)))
        values = [round(start + i * step, 12) for i in range(count)]
    if not values:
        raise source.error(path, f"range [{start}, {stop}, {step}] is empty")
    return values


def _is_form(value: Any) -> str | None:
    if isinstance(value, dict) and value:
        keys = set(value)
        if "when" in keys and keys <= {"when", "then", "else"}:
            return "when"
        if len(keys) == 1:
            (key,) = keys
            if key in FORMS:
                return key
    return None


def _check_typo(value: Any, source: SpecSource, path: KeyPath) -> None:
    """`{gird: [...]}` would silently be a plain mapping: name the likely intended form."""
    if isinstance(value, dict) and len(value) == 1:
        (key,) = value
        close = difflib.get_close_matches(str(key), FORMS, n=1, cutoff=0.75)
        if close and key not in FORMS:
            raise source.error(path + (key,), f"unknown form '{key}'", hint=f"did you mean '{close[0]}'?")


def parse_entry(key: str, value: Any, source: SpecSource, path: KeyPath) -> Entry:
    form = _is_form(value)
    if form is None:
        _check_typo(value, source, path)
        return Fixed(key, [value])
    args = value[form]
    here = path + (form,)
    if form == "grid":
        if not isinstance(args, list):
            raise source.error(here, f"grid takes a list, got {type(args).__name__}")
        if not args:
            raise source.error(here, "grid is empty")
        return Fixed(key, list(args))
    if form == "range":
        return Fixed(key, _parse_range(args, source, here))
    if form == "zip":
        if not isinstance(args, dict) or not args:
            raise source.error(here, "zip takes a mapping of parameter -> list")
        lengths = {}
        for name, column in args.items():
            if not isinstance(column, list) or not column:
                raise source.error(here + (name,), "zip column must be a non-empty list")
            lengths[name] = len(column)
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise source.error(here, f"zip columns have unequal lengths ({detail})")
        names = tuple(args)
        rows = [dict(zip(names, row)) for row in zip(*args.values())]
        return Bundles(names, rows)
    if form == "cases":
        if not isinstance(args, list) or not args:
            raise source.error(here, "cases takes a non-empty list of mappings")
        for i, case in enumerate(args):
            if not isinstance(case, dict) or not case:
                raise source.error(here + (i,), "each case must be a non-empty mapping of parameter -> value")
        keys = tuple(dict.fromkeys(k for case in args for k in case))
        return Bundles(keys, [dict(case) for case in args])
    # when
    condition = value["when"]
    if not isinstance(condition, dict) or not condition:
        raise source.error(path + ("when",), "when takes a mapping of parameter -> value or list of values")
    if "then" not in value:
        raise source.error(path, "when needs a `then:` value")
    allowed = {k: (v if isinstance(v, list) else [v]) for k, v in condition.items()}
    then = parse_entry(key, value["then"], source, path + ("then",))
    otherwise = parse_entry(key, value["else"], source, path + ("else",)) if "else" in value else None
    if isinstance(then, Bundles) or isinstance(otherwise, Bundles):
        raise source.error(path, "when branches take a value, grid or range (not zip or cases)")
    return Conditional(key, allowed, then, otherwise)


@dataclass
class ParamSpace:
    """The parsed `params:` of one stage: entries in declaration order."""

    entries: list[Entry]
    source: SpecSource
    path: KeyPath
    owners: dict[str, str]  # parameter name -> the `params:` key that sets it

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return expand(self)

    def declared_keys(self) -> list[str]:
        return list(dict.fromkeys(k for e in self.entries for k in e.keys))

    def size(self) -> int | None:
        """Number of runs if known without enumerating (no conditionals), else None."""
        total = 1
        for entry in self.entries:
            size = entry.size()
            if size is None:
                return None
            total *= size
        return total


def parse_params(params: dict[str, Any], source: SpecSource, path: KeyPath) -> ParamSpace:
    entries: list[Entry] = []
    declared: dict[str, KeyPath] = {}
    for key, value in params.items():
        entry = parse_entry(key, value, source, path + (key,))
        for name in entry.keys:
            if name in declared:
                raise source.error(path + (key,), f"parameter '{name}' is set twice (also by {declared[name][-1]})")
            declared[name] = path + (key,)
        if isinstance(entry, Conditional):
            for name in entry.condition:
                if name not in declared:
                    raise source.error(
                        path + (key, "when", name),
                        f"condition refers to '{name}', which is not declared before '{key}'",
                    )
        entries.append(entry)
    space = ParamSpace(entries, source, path, {name: where[-1] for name, where in declared.items()})
    _check_references(space)
    return space


def _references(value: Any) -> set[str]:
    if isinstance(value, str):
        return {m.split(".")[0] for m in REFERENCE.findall(value)}
    if isinstance(value, dict):
        return set().union(*map(_references, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_references, value)) if value else set()
    return set()


def _entry_values(entry: Entry) -> list[Any]:
    if isinstance(entry, Fixed):
        return entry.values
    if isinstance(entry, Bundles):
        return entry.bundles
    if isinstance(entry, Conditional):
        return _entry_values(entry.then) + (_entry_values(entry.otherwise) if entry.otherwise else [])
    return []


def _check_references(space: ParamSpace) -> None:
    """References name declared parameters and form no cycle (checked once, before expansion)."""
    declared = set(space.declared_keys())
    graph: dict[str, set[str]] = {}
    for entry in space.entries:
        refs = _references(_entry_values(entry))
        for name in refs - declared:
            raise space.source.error(
                space.path + (entry.keys[0],), f"reference '${{{name}}}' names no parameter of this stage"
            )
        for key in entry.keys:
            graph[key] = graph.get(key, set()) | refs
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycle = " -> ".join(trail + [start])
                    raise space.source.error(space.path + (start,), f"reference cycle: {cycle}")
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _resolve(value: Any, params: dict[str, Any], depth: int = 0) -> Any:
    if depth > 32:
        raise RecursionError("reference nesting too deep")
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return _resolve(_lookup(params, whole.group(1)), params, depth + 1)
        if "${" in value:
            return REFERENCE.sub(lambda m: str(_resolve(_lookup(params, m.group(1)), params, depth + 1)), value)
        return value
    if isinstance(value, dict):
        return {k: _resolve(v, params, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, params, depth + 1) for v in value]
    return value


def resolve_references(params: dict[str, Any], source: SpecSource, path: KeyPath) -> dict[str, Any]:
    try:
        return {k: _resolve(v, params) for k, v in params.items()}
    except KeyError as exc:
        name = exc.args[0]
        raise source.error(path, f"reference '${{{name}}}' is not set in this run (a conditional left it out?)") from None


def expand(space: ParamSpace) -> Iterator[dict[str, Any]]:
    """Lazily enumerate every assignment, in declaration order (last key fastest)."""
    entries = space.entries
    has_refs = any(_references(_entry_values(e)) for e in entries)
    if all(not isinstance(e, Conditional) for e in entries):
        choice_lists = [e.choices({}) for e in entries]
        for combo in itertools.product(*choice_lists):
            assigned: dict[str, Any] = {}
            for part in combo:
                assigned.update(part)
            yield resolve_references(assigned, space.source, space.path) if has_refs else assigned
        return

    def walk(i: int, assigned: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(entries):
            yield resolve_references(assigned, space.source, space.path) if has_refs else dict(assigned)
            return
        for part in entries[i].choices(assigned):
            yield from walk(i + 1, {**assigned, **part})

    yield from walk(0, {})
