"""The row schema: the orchestrator's columns and their types, run statuses, and how rows are built.

Every stored row is `identity + parameters + the task's metrics + outcome + provenance`. This module is
the one place that knows which columns are the orchestrator's (a task may not return them), how
parameters become columns and back, and which statuses and error types a row can carry.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from orchestrator.execute import RunResult
    from orchestrator.provenance import CodeState
    from orchestrator.runs import Run

# A run's outcome. In memory a result is OK or FAILED with an error type; a stored row's `status` is `ok`
# or the error type itself (also in `error_type`), so `status` alone says why a run failed.
OK, FAILED = "ok", "failed"
TASK_ERROR = "task_error"  # the task raised
BAD_OUTPUT = "bad_output"  # the task returned rows that cannot be stored
MEMORY_LIMIT = "memory_limit"  # the run exceeded its `memory` reservation
MISSING_UPSTREAM = "missing_upstream"  # an upstream run it reads is not stored as ok
TIMEOUT = "timeout"  # the run exceeded its stage's `timeout_s`
PRUNED = "pruned"  # a tune stage's scheduler stopped the run on its reports: final, not a failure
# The scheduler adds Ray's system failures: worker_died, node_died, out_of_memory, object_lost,
# unschedulable, ray_error, worker_error.


def is_failure(status: str | None) -> bool:
    """A stored status that records a failed run (every status but `ok` and `pruned`)."""
    return status is not None and status not in (OK, PRUNED)


def is_final(status: str | None) -> bool:
    """A stored status `retry` leaves alone: the run finished (`ok`) or was stopped on purpose (`pruned`)."""
    return status in (OK, PRUNED)

# Columns the orchestrator writes, typed even when a batch holds only nulls (so parts concatenate).
COLUMN_TYPES: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "sweep": pa.string(),
    "stage": pa.string(),
    "task": pa.string(),
    "task_version": pa.int64(),
    "upstream_run_ids": pa.list_(pa.string()),
    "selected_from": pa.string(),
    "selected_by": pa.string(),
    "seed": pa.int64(),
    "status": pa.string(),
    "error_type": pa.string(),
    "error": pa.string(),
    "traceback": pa.string(),
    "attempt": pa.int64(),
    "duration_s": pa.float64(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "node": pa.string(),
    "gpu": pa.string(),
    "git_commit": pa.string(),
    "git_dirty": pa.bool_(),
    "versions": pa.string(),
}
RESERVED_COLUMNS: tuple[str, ...] = tuple(COLUMN_TYPES)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def value_kind(value: Any) -> str | None:
    """The storable kind of a row value: bool, int, float, string (None for a null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "timestamp" if isinstance(value, datetime) else type(value).__name__


def arrow_kind(kind: pa.DataType) -> str | None:
    """The kind a stored column holds (None for an all-null column, which takes any kind)."""
    if pa.types.is_null(kind):
        return None
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "list"
    return "timestamp" if pa.types.is_timestamp(kind) else str(kind)


def merged_kind(stored: str | None, new: str | None) -> str | None:
    """The column's kind once `new` joins `stored`, or "" when they cannot share a column.

    The one widening: int and float make float (every int64 a run returns is stored as float64 then).
    """
    if stored is None or new is None or stored == new:
        return stored or new
    return "float" if {stored, new} == {"int", "float"} else ""


class ColumnKinds:
    """A stage's column kinds as stored so far: a run whose rows contradict them is refused (bad_output)."""

    def __init__(self, kinds: dict[str, str | None] | None = None) -> None:
        self.kinds: dict[str, str | None] = dict(kinds or {})

    def admit(self, rows: list[dict[str, Any]]) -> str | None:
        """Take the rows' kinds into the stage's, or say why they cannot be stored beside its other rows (then
        nothing changes). Columns whose kind is already the stored one cost a type lookup (the usual case)."""
        changed: dict[str, str | None] = {}
        for row in rows:
            for column, value in row.items():
                kind = _KIND_OF_TYPE[type(value)] if type(value) in _KIND_OF_TYPE else value_kind(value)
                if kind == "int" and not INT64_MIN <= value <= INT64_MAX:
                    return f"column '{column}' holds {value}, which does not fit a 64-bit integer"
                stored = changed[column] if column in changed else self.kinds.get(column)
                if kind is None or kind == stored:
                    continue
                merged = merged_kind(stored, kind)
                if merged == "":
                    return (f"column '{column}' holds a {kind} ({value!r:.80}) but the stage's results store it "
                            f"as {stored}; a column keeps one type (int may widen to float)")
                changed[column] = merged
        self.kinds.update(changed)
        return None


_KIND_OF_TYPE: dict[type, str | None] = {type(None): None, bool: "bool", int: "int", float: "float", str: "string",
                                        list: "list"}


def param_column(value: Any) -> Any:
    """Parameters are columns; nested values are stored as canonical JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def from_column(value: Any) -> Any:
    """A parameter as read back from its column (the inverse of `param_column`)."""
    if hasattr(value, "item"):  # numpy scalars from pandas
        value = value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def column_clash(rows: list[dict[str, Any]], params: dict[str, Any]) -> str | None:
    """Why the task's rows cannot be stored beside the run's columns, or None."""
    for row in rows:
        for key, value in row.items():
            if key in COLUMN_TYPES:
                return f"the task returned column '{key}', which is reserved for the orchestrator"
            if key in params and value != params[key] and param_column(value) != param_column(params[key]):
                return f"the task returned column '{key}'={value!r}, clashing with parameter {key}={params[key]!r}"
    return None


def result_rows(run: Run, result: RunResult, code: CodeState, versions: str) -> list[dict[str, Any]]:
    """Stored rows of one finished run: identity, parameters, metrics, status and provenance."""
    base: dict[str, Any] = {
        "run_id": run.run_id,
        "sweep": run.sweep,
        "stage": run.stage,
        "task": run.task,
        "task_version": run.task_version,
    }
    for key, value in run.params.items():
        base[key] = param_column(value)
    if result.status == OK:
        problem = column_clash(result.rows, run.params)
        if problem:
            result.status, result.error_type, result.error, result.rows = FAILED, BAD_OUTPUT, problem, []
    tail = {
        "upstream_run_ids": list(run.upstream_ids),
        "selected_from": run.selected_from,
        "selected_by": run.selected_by,
        "seed": run.seed,
        "status": OK if result.status == OK else result.error_type or FAILED,
        "error_type": result.error_type,
        "error": result.error,
        "traceback": result.traceback,
        "attempt": result.attempt,
        "duration_s": result.duration_s,
        "started_at": datetime.fromtimestamp(result.started_at, tz=timezone.utc),
        "node": result.node,
        "gpu": result.gpu,
        "git_commit": code.commit,
        "git_dirty": code.dirty,
        "versions": versions,
    }
    if result.status != OK or not result.rows:
        return [{**base, **tail}]
    return [{**base, **row, **tail} for row in result.rows]
