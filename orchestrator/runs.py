"""Runs: a task, validated parameters and the runs it reads, addressed by its lineage.

`run_id` = sha256 of (task name, task version, canonical validated parameters, the sorted ids of the
upstream runs it reads, and for a transferred run the trial it was selected from). The seed is a
parameter when the task has one, else derived from the id, so it is covered either way. The same run
with the same upstream runs has the same id in any process, on any machine, in any sweep; change
anything upstream and the downstream id changes with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

RUN_ID_LENGTH = 16


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def make_run_id(
    task: str, version: int, params: dict[str, Any], upstream: Iterable[str] = (), selected_from: str | None = None
) -> str:
    """The lineage address of a run. Roots hash exactly (task, version, params), as before lineage."""
    identity: dict[str, Any] = {"task": task, "version": version, "params": params}
    upstream_ids = sorted(set(upstream))
    if upstream_ids:
        identity["upstream"] = upstream_ids
    if selected_from is not None:
        identity["selected_from"] = selected_from
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:RUN_ID_LENGTH]


def seed_from_run_id(run_id: str) -> int:
    """The run's seed when its task has no `seed` parameter: 31 bits of its id."""
    return int(run_id[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class Run:
    """One run of a stage. `target` is the task's import path ("module:function"), sent to workers."""

    sweep: str
    stage: str
    task: str
    target: str
    task_version: int
    params: dict[str, Any]
    run_id: str
    upstream: dict[str, tuple[str, ...]] = field(default_factory=dict)  # needed stage -> run ids it reads
    selected_from: str | None = None
    selected_by: str | None = None  # a transfer run: the rule that chose its config (not part of the id)

    @property
    def upstream_ids(self) -> list[str]:
        return sorted({run_id for ids in self.upstream.values() for run_id in ids})

    @property
    def seed(self) -> int:
        seed = self.params.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else seed_from_run_id(self.run_id)
