"""Tune stages (Ray Tune + Optuna on the val split) and transfer stages (best config -> test)."""

from __future__ import annotations

from typing import Any

from orchestrator.stages import StageOutcome, Sweep


def run_selection_stage(sweep: Sweep, name: str, options: Any, progress: Any, ensure_cluster: Any) -> StageOutcome:
    raise NotImplementedError("tune/transfer stages")
