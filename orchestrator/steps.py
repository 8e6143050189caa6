"""Intermediate reports (`ctx.report`): where a run's steps go while it runs, and who may stop it.

One `StepBroker` per stage execution receives every `ctx.report` of the stage's runs: it buffers the
step rows for the driver (which writes them to `<stage>/steps/`, see `ResultStore.step_rows`) and,
when the stage has a scheduler (`tune.scheduler`), asks it whether the run should stop. The broker
is plain Python: the inline executor calls it in the driver process; the Ray executor puts it in one
small actor per stage (scheduler.py), which workers call synchronously on each report (about 1 ms)
and the driver drains on every scheduling tick. The decision is made when the step is reported, the
same for both executors, so a stopped run never trains past the step it was judged on.

Why the driver writes the rows and not the worker: one Parquet part per flush for the whole stage
(not one per run per flush), remote stores need no credentials in workers, and rows reach the
broker as they happen, so a worker killed mid-run still leaves its curve up to its last report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

STEP_COLUMNS = ("run_id", "attempt", "step", "reported_at")  # what every step row holds besides its metrics


class StopRule(Protocol):
    """Decides, per search group, whether a run should stop after a step (tune.Pruning implements it)."""

    def should_stop(self, group: str, run_id: str, step: int, metrics: dict[str, Any]) -> bool: ...

    def finished(self, group: str, run_id: str, state: str, value: float | None) -> None: ...


class StepBroker:
    """Collects step rows and answers `report` with stop (True) or go on (False)."""

    def __init__(self, rule: StopRule | None = None) -> None:
        self.rule = rule
        self.rows: list[dict[str, Any]] = []
        self.listener: Callable[[], None] | None = None  # inline: the driver drains after each report

    def report(self, run_id: str, attempt: int, group: str | None, step: int, metrics: dict[str, Any]) -> bool:
        clash = [k for k in metrics if k in STEP_COLUMNS]
        if clash:
            raise ValueError(f"ctx.report: metric name(s) {', '.join(clash)} are reserved for the step table")
        self.rows.append({"run_id": run_id, "attempt": attempt, "step": step, "reported_at": time.time(), **metrics})
        stop = bool(self.rule is not None and group is not None
                    and self.rule.should_stop(group, run_id, step, metrics))
        if self.listener is not None:
            self.listener()
        return stop

    def finished(self, group: str, run_id: str, state: str, value: float | None) -> None:
        """A run of `group` ended (state ok / pruned / failed): the rule sees it among the finished."""
        if self.rule is not None:
            self.rule.finished(group, run_id, state, value)

    def drain(self) -> list[dict[str, Any]]:
        rows, self.rows = self.rows, []
        return rows


class StepChannel(Protocol):
    """The driver's side of a stage's broker (the executor makes it: a local object, or a Ray actor)."""

    worker_handle: Any  # goes into each RunPayload; has `.report(run_id, attempt, group, step, metrics)`

    def drain(self, wait: bool = False) -> list[dict[str, Any]]: ...

    def finished(self, group: str, run_id: str, state: str, value: float | None) -> None: ...

    def close(self) -> None: ...


class LocalChannel:
    """The inline executor's channel: the broker itself, in the driver process."""

    def __init__(self, rule: StopRule | None) -> None:
        self.broker = StepBroker(rule)
        self.worker_handle = self.broker

    def drain(self, wait: bool = False) -> list[dict[str, Any]]:
        return self.broker.drain()

    def finished(self, group: str, run_id: str, state: str, value: float | None) -> None:
        self.broker.finished(group, run_id, state, value)

    def close(self) -> None:
        pass
