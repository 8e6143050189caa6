"""What a task sees of the orchestrator: its run's identity, seed, device and directories.

Imports neither Ray nor torch, so tasks stay pure and testable without a cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
