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

Nothing is materialised: ranges stay `range` / `FloatRange`, expansion streams one run at a time,
`ParamSpace.size()` counts runs arithmetically and `check_run_limit` refuses a stage past a run limit.
References resolve in a dependency order fixed once per stage, so chains of any depth work.

Expansion knows nothing of tasks or Ray: pure spec in, dicts out.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import SpecError
from orchestrator.spec import KeyPath, SpecSource

FORMS = ("grid", "range", "zip", "cases", "when")
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")

DEFAULT_MAX_RUNS = 1_000_000  # runs per stage a plan holds (each distinct run is kept in memory)
"""Most runs a stage may expand to unless raised (`--max-runs`, `max_runs:`); see `check_run_limit`."""
MAX_COUNTING_STATES = 4096
"""`ParamSpace.size()` tracks which `when:` conditions can still hold; past this many combinations of them
it gives up (returns None) rather than spend exponential time."""


@dataclass(frozen=True)
class FloatRange:
    """A float `{range: ...}` without its list: value i is round(start + i * step, 12), computed on demand."""

    start: float
    step: float
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> float:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return round(self.start + index * self.step, 12)

    def __iter__(self) -> Iterator[float]:
        return (round(self.start + i * self.step, 12) for i in range(self.length))

    def count(self, value: float) -> int:
        """How many values equal `value`: they are monotonic in the index, so two binary searches."""
        sign = 1 if self.step > 0 else -1

        def key(index: int) -> float:
            return sign * self[index]

        indices = range(self.length)
        return bisect_right(indices, sign * value, key=key) - bisect_left(indices, sign * value, key=key)


Values = list[Any] | range | FloatRange


@dataclass
class Fixed:
    """A key with a list (or range) of values: one choice per value."""

    key: str
    values: Values

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def choices(self, assigned: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return ({self.key: v} for v in self.values)

    def references(self) -> set[str]:
        return _references(self.values) if isinstance(self.values, list) else set()  # ranges hold numbers


@dataclass
class Bundles:
    """`zip` or `cases`: several keys set together, one choice per bundle."""

    keys: tuple[str, ...]
    bundles: list[dict[str, Any]]

    def choices(self, assigned: dict[str, Any]) -> list[dict[str, Any]]:
        return self.bundles

    def references(self) -> set[str]:
        return _references(self.bundles)


@dataclass
class Conditional:
    """`when:`: the `then` values where the condition on earlier keys holds, else `else` (or no value)."""

    key: str
    condition: dict[str, list[Any]]
    then: Fixed | Conditional
    otherwise: Fixed | Conditional | None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def choices(self, assigned: dict[str, Any]) -> Iterable[dict[str, Any]]:
        if all(assigned.get(k, _MISSING) in allowed for k, allowed in self.condition.items()):
            return self.then.choices(assigned)
        return self.otherwise.choices(assigned) if self.otherwise else [{}]

    def nested(self) -> list[Conditional]:
        """This conditional and those in its branches (a branch may be a `when:` itself)."""
        branches = [b for b in (self.then, self.otherwise) if isinstance(b, Conditional)]
        return [self, *(c for branch in branches for c in branch.nested())]

    def references(self) -> set[str]:
        return self.then.references() | (self.otherwise.references() if self.otherwise else set())


Entry = Fixed | Bundles | Conditional  # one key of `params:`, yielding the partial assignments it contributes
_MISSING = object()


def _parse_range(args: Any, source: SpecSource, path: KeyPath) -> range | FloatRange:
    if isinstance(args, dict):
        args = [args.get("start", 0), args.get("stop"), args.get("step", 1)]
    if not isinstance(args, list) or not 1 <= len(args) <= 3:
        raise source.error(path, "range takes [stop], [start, stop] or [start, stop, step]")
    if len(args) == 1:
        args = [0, args[0]]
    start, stop, step = [*args, 1][:3]
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise source.error(path, f"range {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise source.error(path, f"range {name} must be finite, got {value!r}")
    if step == 0:
        raise source.error(path, "range step must not be 0")
    steps = -(-(stop - start) // step)  # ceil((stop - start) / step), exact for integers
    if not math.isfinite(steps) or steps > sys.maxsize:
        raise source.error(path, f"range [{start}, {stop}, {step}] has more than {sys.maxsize:,} values")
    if steps <= 0:
        raise source.error(path, f"range [{start}, {stop}, {step}] is empty")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return range(start, stop, step)
    return FloatRange(start, step, int(steps))


def _is_form(value: Any) -> str | None:
    if isinstance(value, dict) and value:
        keys = set(value)
        if "when" in keys and keys <= {"when", "then", "else"}:
            return "when"
        if len(keys) == 1:
            (key,) = keys
            if key in FORMS:
                return str(key)
    return None


def _check_typo(value: Any, source: SpecSource, path: KeyPath) -> None:
    """`{gird: [...]}` would silently be a plain mapping: name the likely intended form."""
    if isinstance(value, dict) and len(value) == 1:
        (key,) = value
        close = difflib.get_close_matches(str(key), FORMS, n=1, cutoff=0.75)
        if close and key not in FORMS:
            raise source.error((*path, key), f"unknown form '{key}'", hint=f"did you mean '{close[0]}'?")


def parse_entry(key: str, value: Any, source: SpecSource, path: KeyPath) -> Entry:
    form = _is_form(value)
    if form is None:
        _check_typo(value, source, path)
        return Fixed(key, [value])
    args = value[form]
    here = (*path, form)
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
                raise source.error((*here, name), "zip column must be a non-empty list")
            lengths[name] = len(column)
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise source.error(here, f"zip columns have unequal lengths ({detail})")
        names = tuple(args)
        rows = [dict(zip(names, row, strict=True)) for row in zip(*args.values(), strict=True)]
        return Bundles(names, rows)
    if form == "cases":
        if not isinstance(args, list) or not args:
            raise source.error(here, "cases takes a non-empty list of mappings")
        for i, case in enumerate(args):
            if not isinstance(case, dict) or not case:
                raise source.error((*here, i), "each case must be a non-empty mapping of parameter -> value")
        keys = tuple(dict.fromkeys(k for case in args for k in case))
        return Bundles(keys, [dict(case) for case in args])
    # when
    condition = value["when"]
    if not isinstance(condition, dict) or not condition:
        raise source.error((*path, "when"), "when takes a mapping of parameter -> value or list of values")
    if "then" not in value:
        raise source.error(path, "when needs a `then:` value")
    allowed = {k: (v if isinstance(v, list) else [v]) for k, v in condition.items()}
    then = parse_entry(key, value["then"], source, (*path, "then"))
    otherwise = parse_entry(key, value["else"], source, (*path, "else")) if "else" in value else None
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
    reference_order: list[str] = field(default_factory=list)  # keys holding references, dependencies first

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return expand(self)

    def declared_keys(self) -> list[str]:
        return list(dict.fromkeys(k for e in self.entries for k in e.keys))

    def size(self) -> int | None:
        """The exact number of runs, computed without enumerating them, `when:` conditionals included.

        Walks the entries keeping, per set of conditions already known to fail, how many partial runs lead
        there. None only when those sets pass MAX_COUNTING_STATES.
        """
        conditions = [(i, c) for i, e in enumerate(self.entries) if isinstance(e, Conditional) for c in e.nested()]
        numbers = {id(c): n for n, (_, c) in enumerate(conditions)}
        position = {key: i for i, entry in enumerate(self.entries) for key in entry.keys}
        tests: dict[str, list[tuple[int, int, list[Any]]]] = {}  # key -> (entry index, condition, allowed values)
        decided_at: dict[int, set[int]] = {}  # entry index -> its conditions, which no later entry tests
        for n, (i, condition) in enumerate(conditions):
            decided_at.setdefault(i, set()).add(n)
            for key, allowed in condition.condition.items():
                tests.setdefault(key, []).append((i, n, allowed))
        # A condition on a key not set before it tests a missing value: it fails from the start.
        states = {frozenset(n for key, found in tests.items() for i, n, _ in found if position.get(key, i) >= i): 1}
        for i, entry in enumerate(self.entries):
            testers = {key: [(n, allowed) for j, n, allowed in tests.get(key, []) if j > i] for key in entry.keys}
            decided = decided_at.get(i, set())
            following: dict[frozenset[int], int] = {}
            for failed, partial_runs in states.items():
                for newly_failed, ways in _choice_outcomes(entry, failed, numbers, testers):
                    state = (failed | newly_failed) - decided
                    following[state] = following.get(state, 0) + partial_runs * ways
            states = following
            if len(states) > MAX_COUNTING_STATES:
                return None
        return sum(states.values())


def _choice_outcomes(entry: Entry, failed: frozenset[int], numbers: dict[int, int],
                     testers: dict[str, list[tuple[int, list[Any]]]]) -> Iterator[tuple[frozenset[int], int]]:
    """(later conditions that fail, number of the entry's choices that make them fail), for every outcome.

    `failed`: the conditions known to fail (`numbers` gives a condition's number); `testers`: per key of the
    entry, the later conditions testing it, with their allowed values.
    """
    if isinstance(entry, Bundles):
        outcomes: dict[frozenset[int], int] = {}
        for bundle in entry.bundles:
            failing = frozenset(n for key in entry.keys for n, allowed in testers[key]
                                if bundle.get(key, _MISSING) not in allowed)
            outcomes[failing] = outcomes.get(failing, 0) + 1
        yield from outcomes.items()
        return
    (key,) = entry.keys
    column: Fixed | Conditional | None = entry
    while isinstance(column, Conditional):
        column = column.otherwise if numbers[id(column)] in failed else column.then
    if column is None:  # a conditional without `else`: the key is left out, so every test of it fails
        yield frozenset(n for n, _ in testers[key]), 1
        return
    if not testers[key]:
        yield frozenset(), len(column.values)
        return
    tested: list[Any] = []  # the distinct values some condition allows: only they can pass a test
    for value in (v for _, allowed in testers[key] for v in allowed):
        if not any(value == seen for seen in tested):
            tested.append(value)
    counted = 0
    for value in tested:
        matches = _count_equal(column.values, value)
        if matches:
            counted += matches
            yield frozenset(n for n, allowed in testers[key] if value not in allowed), matches
    if counted < len(column.values):
        yield frozenset(n for n, _ in testers[key]), len(column.values) - counted


def _count_equal(values: Values, target: Any) -> int:
    """How many of `values` equal `target`, without enumerating a range."""
    if isinstance(values, list):
        return sum(1 for v in values if v == target)
    if not isinstance(target, (int, float)) or target != target:  # ranges hold numbers; NaN equals nothing
        return 0
    if isinstance(values, range):
        return values.count(int(target)) if isinstance(target, int) or target.is_integer() else 0
    return values.count(target)


def check_run_limit(space: ParamSpace, limit: int = DEFAULT_MAX_RUNS) -> int:
    """The stage's number of runs; a SpecError at its `params` if that is above `limit`.

    The count is arithmetic (`size()`); only where that gives up are runs enumerated, at most limit + 1.
    """
    size = space.size()
    if size is None:
        size = sum(1 for _ in itertools.islice(space, limit + 1))
        if size > limit:
            raise space.source.error(space.path, f"the stage expands to more than {limit:,} runs, the limit "
                                     "(raise it with `max_runs:` in the spec, or the override max_runs=N)")
    elif size > limit:
        raise space.source.error(space.path, f"the stage expands to {size:,} runs, above the limit of {limit:,} "
                                 "(raise it with `max_runs:` in the spec, or the override max_runs=N)")
    return size


def parse_params(params: dict[str, Any], source: SpecSource, path: KeyPath) -> ParamSpace:
    entries: list[Entry] = []
    declared: dict[str, KeyPath] = {}
    for key, value in params.items():
        entry = parse_entry(key, value, source, (*path, key))
        for name in entry.keys:
            if name in declared:
                raise source.error((*path, key), f"parameter '{name}' is set twice (also by {declared[name][-1]})")
            declared[name] = (*path, key)
        if isinstance(entry, Conditional):
            for name in entry.condition:
                if name not in declared:
                    raise source.error(
                        (*path, key, "when", name),
                        f"condition refers to '{name}', which is not declared before '{key}'",
                    )
        entries.append(entry)
    space = ParamSpace(entries, source, path, {name: str(where[-1]) for name, where in declared.items()})
    space.reference_order = _reference_order(space)
    return space


def _references(value: Any) -> set[str]:
    if isinstance(value, str):
        return {m.split(".")[0] for m in REFERENCE.findall(value)}
    if isinstance(value, dict):
        return set().union(*map(_references, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_references, value)) if value else set()
    return set()


def _reference_order(space: ParamSpace) -> list[str]:
    """The keys whose values hold references, each after the keys it refers to (checked once, before
    expansion): references name declared parameters and form no cycle, however long the chains."""
    declared = space.declared_keys()
    graph: dict[str, set[str]] = {key: set() for key in declared}
    for entry in space.entries:
        refs = entry.references()
        unknown = sorted(name for name in refs if name not in graph)
        if unknown:
            raise space.source.error(
                (*space.path, entry.keys[0]), f"reference '${{{unknown[0]}}}' names no parameter of this stage"
            )
        for key in entry.keys:
            graph[key] |= refs
    # Kahn's algorithm: a key is ready once every key it refers to is.
    waiting = {key: len(refs) for key, refs in graph.items()}
    referrers: dict[str, list[str]] = {key: [] for key in graph}
    for key, refs in graph.items():
        for name in refs:
            referrers[name].append(key)
    ready = [key for key in declared if not waiting[key]]
    order: list[str] = []
    while ready:
        key = ready.pop()
        order.append(key)
        for referrer in referrers[key]:
            waiting[referrer] -= 1
            if not waiting[referrer]:
                ready.append(referrer)
    if len(order) < len(graph):
        raise _cycle_error(space, graph, {key for key in graph if waiting[key]})
    return [key for key in order if graph[key]]


def _cycle_error(space: ParamSpace, graph: dict[str, set[str]], stuck: set[str]) -> SpecError:
    """Name one reference cycle among the keys Kahn's algorithm could not order (each refers to another)."""
    key = next(k for k in space.declared_keys() if k in stuck)
    trail, seen = [key], {key: 0}
    while True:
        key = min(graph[key] & stuck)
        if key in seen:
            cycle = [*trail[seen[key]:], key]
            return space.source.error((*space.path, cycle[0]), f"reference cycle: {' -> '.join(cycle)}")
        seen[key] = len(trail)
        trail.append(key)


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _substitute(value: Any, resolved: dict[str, Any]) -> Any:
    """`value` with its references replaced by values from `resolved` (whose own references are done)."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return _lookup(resolved, whole.group(1))
        if "${" in value:
            return REFERENCE.sub(lambda m: str(_lookup(resolved, m.group(1))), value)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, resolved) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, resolved) for v in value]
    return value


def resolve_references(params: dict[str, Any], space: ParamSpace) -> dict[str, Any]:
    """One run's parameters with every reference replaced, keys taken in `space.reference_order`."""
    resolved = dict(params)
    try:
        for key in space.reference_order:
            if key in resolved:
                resolved[key] = _substitute(resolved[key], resolved)
    except KeyError as exc:
        raise space.source.error(
            space.path, f"reference '${{{exc.args[0]}}}' is not set in this run (a conditional left it out?)"
        ) from None
    return resolved


def expand(space: ParamSpace) -> Iterator[dict[str, Any]]:
    """Lazily enumerate every assignment, in declaration order (last key fastest); ranges never become lists.

    A stack of iterators, one per entry but the last, and one `assigned` dict that each entry's part
    enters and leaves (no two entries set the same key): memory stays proportional to the number of keys.
    """
    if not space.entries:
        yield {}
        return
    *outer, last = space.entries
    assigned: dict[str, Any] = {}
    parts: list[dict[str, Any]] = []  # the part each outer entry on the stack has put into `assigned`
    choices: list[Iterator[dict[str, Any]]] = []
    while True:
        if len(parts) < len(outer):  # the next outer entry starts its choices, given the earlier parts
            choices.append(iter(outer[len(parts)].choices(assigned)))
        else:  # every outer entry has its part in: the last entry varies fastest
            for final in last.choices(assigned):
                run = {**assigned, **final}
                yield resolve_references(run, space) if space.reference_order else run
        while choices:  # move the deepest unfinished outer entry to its next part
            if len(parts) == len(choices):
                for key in parts.pop():
                    del assigned[key]
            part = next(choices[-1], None)
            if part is not None:
                assigned.update(part)
                parts.append(part)
                break
            choices.pop()
        else:
            return
