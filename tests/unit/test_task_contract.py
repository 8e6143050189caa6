"""Contract of every registered task, run for real with its `smoke` params (and `smoke_upstream` runs first).

A task must: declare smoke params; return flat scalar rows (at least one); use no orchestrator column and
no parameter name with another value; give the same rows for the same run id and seed; refuse unknown
parameters. Columns a task declares `measured` (wall-clock times of the call) are left out of the
determinism check; any other column differing fails.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ValidationError

from orchestrator.context import RunContext, Upstream, local_context
from orchestrator.execute import normalize_rows
from orchestrator.registry import TaskDef, get_task, task_map
from orchestrator.schema import RESERVED_COLUMNS, column_clash

RUN_ID = "contract-smoke"
SEED = 1234  # ctx.seed of a task without a `seed` parameter (the orchestrator derives one from the run id)

# Task -> why its case is marked slow (it still runs by default; `-m "not slow"` leaves it out). Its smoke
# params are already minimal: the time is a first-use build of a built-in model no parameter shrinks.
SLOW: dict[str, str] = {
    "editing.ensemble": "builds tiny-backpack on first use (600 training steps, ~50 s of CPU)",
}


def _cases() -> list[Any]:
    cases = []
    for name in sorted(task_map()):
        marks: list[Any] = [pytest.mark.slow] if name in SLOW else []
        cases.append(pytest.param(name, id=name, marks=marks))
    return cases


def run_seed(params: dict[str, Any]) -> int:
    """ctx.seed as the orchestrator sets it: the `seed` parameter when the task has one (runs.Run.seed)."""
    seed = params.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else SEED


def run_upstream(task: TaskDef, root: Path) -> dict[str, list[Upstream]]:
    """Run `task.smoke_upstream` (recursively), each in its own context under `root`; the links to hand on."""
    links: dict[str, list[Upstream]] = {}
    for stage, (name, params) in task.smoke_upstream.items():
        upstream_task = get_task(name)
        validated = upstream_task.params.model_validate(params)
        dump = validated.model_dump(mode="json")
        run_id = f"{RUN_ID}-{stage}"
        ctx = call_task(upstream_task, validated, root / stage, run_id, run_upstream(upstream_task, root / stage))[1]
        links[stage] = [Upstream(stage, run_id, dump, ctx.artifact_path)]
    return links


def call_task(
    task: TaskDef, params: BaseModel, root: Path, run_id: str, upstream: dict[str, list[Upstream]]
) -> tuple[Any, RunContext]:
    """One call as a worker makes it: a fresh context under `root`, a fresh setup, then the task."""
    ctx = local_context(run_id=run_id, seed=run_seed(params.model_dump(mode="json")), root=root, upstream=upstream)
    if task.setup is not None:
        ctx.setup = task.setup(params, ctx)
    return task.fn(params, ctx), ctx


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def differing_columns(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> set[str]:
    """Columns whose values differ between two row lists (exact, NaN equal to NaN); '<rows>' if shapes differ."""
    if len(first) != len(second) or any(a.keys() != b.keys() for a, b in zip(first, second, strict=True)):
        return {"<rows>"}
    return {key for a, b in zip(first, second, strict=True) for key in a if not _same(a[key], b[key])}


@pytest.mark.parametrize("name", _cases())
def test_task_contract(name: str, tmp_path: Path) -> None:
    task = get_task(name)
    # Invariant: every registered task declares smoke params (a new task without them fails here).
    assert task.smoke is not None, f"{name}: add smoke={{...}} to its @task(...) (small, fast params)"
    params = task.params.model_validate(task.smoke)
    dump = params.model_dump(mode="json")
    upstream = run_upstream(task, tmp_path / "upstream")

    # (a) Invariant: the return value normalises to at least one flat row of scalars.
    rows = normalize_rows(call_task(task, params, tmp_path / "first", RUN_ID, upstream)[0])
    assert rows and all(rows), f"{name}: returned no rows (or empty rows) for its smoke params"

    # (b) Invariant: no orchestrator column; a parameter name only with the parameter's own value (the rule
    # the store applies, schema.column_clash, against the params as planned: validated, JSON-dumped).
    keys = {key for row in rows for key in row}
    assert not keys & set(RESERVED_COLUMNS), f"{name}: returns reserved columns {sorted(keys & set(RESERVED_COLUMNS))}"
    assert column_clash(rows, dump) is None, f"{name}: {column_clash(rows, dump)}"

    # (d) Invariant: unknown parameters are refused.
    with pytest.raises(ValidationError):
        task.params.model_validate({**task.smoke, "no_such_param_xyz": 1})

    # (c) Invariant: same run id, seed and params give identical rows (fresh context and setup; the global
    # RNGs are moved on first, so a task that draws from them instead of ctx.seed shows up). Floats are compared
    # exactly: no task is nondeterministic on CPU (one torch thread, tests/unit/conftest.py).
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    again = normalize_rows(call_task(task, params, tmp_path / "second", RUN_ID, upstream)[0])
    differ = differing_columns(rows, again) - set(task.measured)
    assert not differ, f"{name}: columns {sorted(differ)} differ between identical calls (declare `measured=` " \
                       "only for columns that time the call itself)"
    assert set(task.measured) <= keys, f"{name}: declares measured columns it never returns"
