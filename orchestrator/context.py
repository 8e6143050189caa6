"""What a task sees of the orchestrator: its run's identity, seed, device and directories.

Imports neither Ray nor torch, so tasks stay pure and testable without a cluster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Reporter = Callable[[int, dict[str, Any]], bool]
"""Where `RunContext.report` sends a step: (step, metrics) -> True when the run should stop now."""


class TrialPruned(BaseException):
    """Raised by `ctx.report` when the stage's scheduler stops the run (a BaseException, like a timeout:
    `except Exception` in a task cannot swallow it). The run is stored with status `pruned`."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped by the stage's scheduler after step {step}")
        self.step = step


@dataclass(frozen=True)
class Upstream:
    """A finished run of a stage this run `needs`: its parameters and its artifact directory."""

    stage: str
    run_id: str
    params: dict[str, Any]
    artifact_dir: Path


@dataclass
class RunContext:
    """Per-run context handed to every task function.

    `setup` holds what the task's `setup` function returned for this run's setup key (a loaded model,
    say); the orchestrator builds it once per worker and reuses it across runs that share the key.
    `artifact_dir` (files kept if the run succeeds) and `scratch_dir` (deleted after the run) are
    created empty on first use, so runs that write no files cost no file-system work.
    `report(step=..., **metrics)` records intermediate metrics (a learning curve); see its docstring.
    """

    run_id: str
    seed: int
    artifact_path: Path
    scratch_path: Path
    device: str = "cpu"
    gpu_ids: list[int] = field(default_factory=list)
    upstream: dict[str, list[Upstream]] = field(default_factory=dict)
    setup: Any = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("tasks"))
    reporter: Reporter | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)  # without a reporter (a direct call)

    def report(self, step: int, **metrics: Any) -> None:
        """Record the metrics of one step (an epoch, say) of this run, as it happens.

        Each call becomes a row of the stage's step table (`ResultStore.step_rows`: run_id, attempt,
        step, reported_at and these metrics), stored while the run goes on, so a run killed later keeps
        its curve. The task's return value stays the run's result row. Under a tune stage with a
        `scheduler`, the metric being tuned is judged at every report, and a run the scheduler stops
        leaves here by `TrialPruned` (stored as `pruned`). Metrics are scalars (numbers, bools, text).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"ctx.report: step must be an int >= 0, got step={step!r}")
        clean: dict[str, Any] = {}
        for key, value in metrics.items():
            if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
                value = value.item()
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise TypeError(f"ctx.report: metric '{key}' is a {type(value).__name__}; reports take scalars")
            if isinstance(value, float) and math.isinf(value):
                value = None  # Parquet holds it, but no curve plot or pruner can use it
            clean[key] = value
        if self.reporter is None:
            self.reports.append({"step": step, **clean})
            return
        if self.reporter(step, clean):
            raise TrialPruned(step)

    @property
    def artifact_dir(self) -> Path:
        self.artifact_path.mkdir(parents=True, exist_ok=True)
        return self.artifact_path

    @property
    def scratch_dir(self) -> Path:
        self.scratch_path.mkdir(parents=True, exist_ok=True)
        return self.scratch_path

    def upstream_one(self, stage: str | None = None) -> Upstream:
        """The single upstream run of `stage` (default: the only stage this one needs) matching this run."""
        if stage is None:
            if len(self.upstream) != 1:
                raise LookupError(f"run {self.run_id} needs {len(self.upstream)} upstream stages; name one")
            stage = next(iter(self.upstream))
        found = self.upstream.get(stage, [])
        if len(found) != 1:
            raise LookupError(
                f"run {self.run_id} expects exactly one matching upstream run of stage '{stage}', "
                f"found {len(found)}"
            )
        return found[0]


def local_context(run_id: str = "local", seed: int = 0, root: Path | None = None, **kwargs: Any) -> RunContext:
    """A context for calling a task directly (tests, notebooks): directories under `root` or a temp dir."""
    import tempfile

    base = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="run-"))
    return RunContext(run_id=run_id, seed=seed, artifact_path=base / "artifacts" / run_id,
                      scratch_path=base / "scratch" / run_id, **kwargs)
