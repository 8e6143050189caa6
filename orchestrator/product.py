"""A root grid stage planned as a product of validated axes, not point by point.

Validating a point against the task's params model costs about 16 µs, so a million points took most of
`plan`'s time. Where no validator of the model sees more than one field (`independent_fields`) and the
stage has no references or conditions, a point's validated params are its values validated one by one:
each axis value is validated once (in batches, by a one-field copy of the model), and the stage's runs
are the combinations of validated values. `plan` then validates a few hundred values and counts runs
arithmetically; a run (and its id) is made only when read, so no million `Run`s are held.

The params, their order, the run ids and the merging of duplicates are exactly those of point-by-point
validation, and an invalid value raises the same error, from the same point (the first invalid one).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Annotated, Any

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WrapSerializer,
    WrapValidator,
    create_model,
)
from pydantic.fields import FieldInfo

from orchestrator.expand import Bundles, Conditional, Fixed, ParamSpace
from orchestrator.runs import RUN_ID_LENGTH, Run, canonical_json

BATCH = 4096  # values validated per pydantic call (bounds the temporary lists of a long range)
PASSIVE_CONFIG = {"extra", "frozen", "use_attribute_docstrings", "title"}  # model settings no value sees
PASSIVE_FIELD = {"annotation", "default", "description", "title", "examples", "json_schema_extra"}
FUNCTIONAL = (AfterValidator, BeforeValidator, PlainValidator, WrapValidator, PlainSerializer, WrapSerializer)
_ABSENT = object()  # a key a case leaves out: its field takes the default


def independent_fields(model: type[BaseModel]) -> bool:
    """Whether validating `model` is validating each field on its own.

    Not so with anything that may read several fields (model validators and serializers, decorated field
    validators and serializers, computed fields, functional validators on a field, default factories
    taking the data), with aliases (the spec key is not the field name) or excluded fields, or where
    unknown keys are not refused.
    """
    decorators = model.__pydantic_decorators__
    if any((decorators.validators, decorators.field_validators, decorators.root_validators,
            decorators.field_serializers, decorators.model_serializers, decorators.model_validators,
            decorators.computed_fields)):
        return False
    if model.model_config.get("extra") != "forbid":
        return False
    return all(info.alias is None and info.validation_alias is None and info.serialization_alias is None
               and not info.exclude and not info.default_factory_takes_validated_data
               and not any(isinstance(m, FUNCTIONAL) for m in info.metadata)
               for info in model.model_fields.values())


def json_of(value: Any) -> str:
    """`canonical_json(value)`, quicker for exact ints, finite floats and strings (what json.dumps writes)."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return canonical_json(value)


def validated_column(model: type[BaseModel], key: str, raws: Any) -> Sequence[Any] | int:
    """Field `key`'s value, as a validated point stores it, for each of `raws` (`_ABSENT`: the default);
    or the index of the first value that does not validate.

    A point is validated twice on its way to a run (the point, then its dump), so each value is too.
    """
    info = model.model_fields.get(key)
    if info is None:  # an unknown parameter: the first value that sets it fails
        return next(i for i, raw in enumerate(raws) if raw is not _ABSENT)
    if _plain_field(model, info) and all(raw is not _ABSENT for raw in raws):
        value: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        return _validated_values(TypeAdapter(list[value]), raws)
    definition: Any = (info.annotation, info)
    single = create_model(f"{model.__name__}_{key}", __config__=model.model_config, **{key: definition})
    batch = TypeAdapter(list[single])
    column: list[Any] = []
    for start in range(0, len(raws), BATCH):
        chunk = (raws[i] for i in range(start, min(start + BATCH, len(raws))))
        items = [{} if raw is _ABSENT else {key: raw} for raw in chunk]
        try:
            for _ in range(2):
                items = batch.dump_python(batch.validate_python(items), mode="json")
        except ValidationError as exc:
            return start + min(int(error["loc"][0]) for error in exc.errors())
        column.extend(item[key] for item in items)
    return column


def _plain_field(model: type[BaseModel], info: FieldInfo) -> bool:
    """Whether the field's values validate as its annotation with its constraints alone, so a list of
    them needs no model around each (a third of a million values a second, not thirty): no model
    setting and no field setting that changes validation, only constraints such as `ge` / `max_length`."""
    options = getattr(info, "_attributes_set", None)  # what the field sets (pydantic's own record of it)
    return (options is not None and set(model.model_config) <= PASSIVE_CONFIG and set(options) <= PASSIVE_FIELD
            and all(isinstance(m, annotated_types.BaseMetadata) for m in info.metadata))


def _validated_values(adapter: TypeAdapter[list[Any]], raws: Sequence[Any]) -> Sequence[Any] | int:
    """The values validated (twice, as a point is), or the index of the first invalid one. An int
    `range` whose every value validates to itself is returned as is: a million-value axis then holds
    no list of values (nor, see `_pieces`, of their JSON)."""
    column: list[Any] = []
    unchanged = isinstance(raws, range)
    for start in range(0, len(raws), BATCH):
        batch = [raws[i] for i in range(start, min(start + BATCH, len(raws)))]
        values = batch
        try:
            for _ in range(2):
                values = adapter.dump_python(adapter.validate_python(values), mode="json")
        except ValidationError as exc:
            return start + min(int(error["loc"][0]) for error in exc.errors())
        if unchanged and all(type(v) is int for v in values) and values == batch:
            continue
        if unchanged:  # the values seen so far validated to themselves
            column.extend(raws[i] for i in range(start))
            unchanged = False
        column.extend(values)
    return raws if unchanged else column


@dataclass
class Axis:
    """One entry of `params:` validated: per distinct choice, the values of its keys (first occurrences, in
    order: choices that validate alike make the same runs)."""

    positions: list[int]  # of the entry's keys among the model's fields
    columns: list[Sequence[Any]]  # per key, its value in each distinct choice
    pieces: list[Sequence[str]]  # per key, `"key":value` in canonical JSON in each distinct choice
    choices: int  # before merging

    @property
    def size(self) -> int:
        return len(self.columns[0])


def validated_axis(model: type[BaseModel], entry: Fixed | Bundles) -> Axis | int:
    """The entry's axis, or the index of its first choice that does not validate."""
    fields = list(model.model_fields)
    keys = list(entry.keys)
    if isinstance(entry, Fixed):
        raw_columns: list[Any] = [entry.values]
    else:
        raw_columns = [[bundle.get(key, _ABSENT) for bundle in entry.bundles] for key in keys]
    columns: list[Sequence[Any]] = []
    invalid: list[int] = []
    for key, raws in zip(keys, raw_columns, strict=True):
        column = validated_column(model, key, raws)
        if isinstance(column, int):
            invalid.append(column)
        else:
            columns.append(column)
    if invalid:
        return min(invalid)
    pieces = [_pieces(key, column) for key, column in zip(keys, columns, strict=True)]
    choices = len(raw_columns[0])
    jsons = pieces[0] if len(pieces) == 1 else list(zip(*pieces, strict=True))  # each choice's JSON
    distinct = len(columns) == 1 and isinstance(columns[0], range)  # an int range repeats no value
    if not distinct and len(set(jsons)) < choices:  # keep each JSON's first occurrence
        first: dict[Any, int] = {}
        for i, json in enumerate(jsons):
            first.setdefault(json, i)
        columns = [[column[i] for i in first.values()] for column in columns]
        pieces = [[column[i] for i in first.values()] for column in pieces]
    return Axis([fields.index(key) for key in keys], columns, pieces, choices)


@dataclass(frozen=True)
class RangePieces(Sequence[str]):
    """`"key":value` of each value of an int range, made when read."""

    head: str
    values: range

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: Any) -> Any:
        return self.head + int.__repr__(self.values[index])

    def __iter__(self) -> Iterator[str]:
        head = self.head
        return (head + text for text in map(int.__repr__, self.values))


def _pieces(key: str, column: Sequence[Any]) -> Sequence[str]:
    """`"key":value` in canonical JSON for each value of the column."""
    head = f"{json_of(key)}:"
    if isinstance(column, range):
        return RangePieces(head, column)
    if all(type(value) is int for value in column):
        return [head + text for text in map(int.__repr__, column)]
    return [head + json_of(value) for value in column]


def raw_point(entries: list[Fixed | Bundles], picks: list[int]) -> dict[str, Any]:
    """The point `expand` yields for these choices (one per entry), keys in the same order."""
    point: dict[str, Any] = {}
    for entry, pick in zip(entries, picks, strict=True):
        point.update({entry.key: entry.values[pick]} if isinstance(entry, Fixed) else entry.bundles[pick])
    return point


class ProductRuns(Mapping[str, Run]):
    """A stage's distinct runs, run id -> run, made on demand from its validated axes.

    Iterating streams the runs in spec order; `len` is arithmetic; iterating the ids hashes each run's
    JSON from its values' pieces (the id `make_run_id` gives a root run), making no `Run`; looking a run
    up by id indexes them all once.
    """

    def __init__(self, first: Run, axes: list[Axis], address: Callable[[dict[str, Any]], Run]) -> None:
        """`first`: the run of the first point (validated in full: it holds every default); `address`
        makes a run of validated params."""
        self.axes, self.address = axes, address
        self.fields, self.template = list(first.params), list(first.params.values())
        self.id_format = self._id_format(first)
        self.points = math.prod(axis.choices for axis in axes)  # before merging duplicates
        self._by_id: dict[str, Run] | None = None

    def _id_format(self, first: Run) -> str:
        """The root identity's canonical JSON, as `make_run_id` hashes it, as a `str.format` template whose
        field {i} is the i-th `"key":value` piece of the axes' keys (in axis order)."""
        slots = [self.fields[position] for axis in self.axes for position in axis.positions]
        slot = {key: i for i, key in enumerate(slots)}

        def piece(key: str, value: Any) -> str:
            return f"{{{slot[key]}}}" if key in slot else _escaped(f"{json_of(key)}:{json_of(value)}")

        params = ",".join(piece(key, value) for key, value in sorted(first.params.items()))
        head, tail = canonical_json({"task": first.task, "version": first.task_version, "params": {}}).split("{}", 1)
        return f"{_escaped(head)}{{{{{params}}}}}{_escaped(tail)}"

    def picks(self) -> Iterator[tuple[int, ...]]:
        """Each distinct run's choice per axis, in spec order (the last axis varies fastest)."""
        return itertools.product(*(range(axis.size) for axis in self.axes))

    def stream(self) -> Iterator[Run]:
        for picks in self.picks():
            row = self.template.copy()
            for axis, pick in zip(self.axes, picks, strict=True):
                for position, column in zip(axis.positions, axis.columns, strict=True):
                    row[position] = column[pick]
            yield self.address(dict(zip(self.fields, row, strict=True)))

    def __len__(self) -> int:
        return math.prod(axis.size for axis in self.axes)

    def __iter__(self) -> Iterator[str]:
        if all(len(axis.pieces) == 1 for axis in self.axes):
            texts = (self.id_format.format(*combo) for combo in itertools.product(*(a.pieces[0] for a in self.axes)))
        else:
            choices = [list(zip(*axis.pieces, strict=True)) for axis in self.axes]
            texts = (self.id_format.format(*itertools.chain.from_iterable(combo))
                     for combo in itertools.product(*choices))
        for text in texts:
            yield hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_LENGTH]

    def __getitem__(self, run_id: str) -> Run:
        if self._by_id is None:
            self._by_id = {run.run_id: run for run in self.stream()}
        return self._by_id[run_id]

    def values(self) -> ValuesView[Run]:
        return StreamedRuns(self)


def _escaped(text: str) -> str:
    """`text` as literal text of a `str.format` template."""
    return text.replace("{", "{{").replace("}", "}}")


class StreamedRuns(ValuesView[Run]):
    """`ProductRuns.values()`: iterating streams the runs (no lookup by id)."""

    def __init__(self, runs: ProductRuns) -> None:
        super().__init__(runs)
        self.runs = runs

    def __iter__(self) -> Iterator[Run]:
        return self.runs.stream()


def product_runs(space: ParamSpace, model: type[BaseModel], check: Callable[[dict[str, Any]], Run],
                 address: Callable[[dict[str, Any]], Run]) -> ProductRuns | None:
    """The stage's runs as a product of validated axes; None where that would not be exact (the stage is
    then validated point by point).

    `check` validates one point in full, as point-by-point planning does (raising its error), and
    `address` makes a run of validated params. The first point is checked in full: its params hold the
    defaults. Where a value does not validate, the first point holding one is checked: the same error.
    """
    entries = [entry for entry in space.entries if not isinstance(entry, Conditional)]
    if len(entries) < len(space.entries) or space.reference_order or not independent_fields(model):
        return None
    first = check(raw_point(entries, [0] * len(entries)))
    axes: list[Axis] = []
    failing: list[int] | None = None
    for j, entry in enumerate(entries):
        axis = validated_axis(model, entry)
        if isinstance(axis, Axis):
            axes.append(axis)
        else:  # the first failing point has the last such entry at its first invalid choice, the rest at 0
            failing = [0] * len(entries)
            failing[j] = axis
    if failing is not None:
        check(raw_point(entries, failing))
        return None  # it validated after all: a validator this module cannot see
    return ProductRuns(first, axes, address)
