"""Parameter models of the demo tasks."""

from __future__ import annotations

from pydantic import Field

from orchestrator.registry import TaskParams


class QuadraticParams(TaskParams):
    x: float
    """First coordinate; the minimum is at x = 1."""
    y: float = 0.0
    """Second coordinate; the minimum is at y = -2."""
    noise: float = Field(0.0, ge=0)
    """Standard deviation of the Gaussian noise added to the loss."""
    seed: int = 0
    """Seed of the noise (enters the run id, so each seed is its own run)."""


class NoopParams(TaskParams):
    i: int = 0


class SleepParams(TaskParams):
    i: int = 0
    seconds: float = Field(0.1, ge=0)


class ProduceParams(TaskParams):
    i: int = 0
    wait_s: float = Field(0.0, ge=0)
    """Seconds to sleep before writing the artifact."""
    fail_if_divisible_by: int = Field(0, ge=0)
    """Raise instead for every i divisible by this (0: never)."""


class FlakyParams(TaskParams):
    i: int
    fail_if_divisible_by: int = Field(0, ge=0)
    fail_while_file_exists: str | None = None


class AllocateParams(TaskParams):
    megabytes: int = Field(ge=0)


class VectorParams(TaskParams):
    length: int = Field(ge=1)
    scale: float = 1.0


class VectorSumParams(TaskParams):
    length: int = Field(ge=1)
    scale: float = 1.0
    power: int = 1


class LookupParams(TaskParams):
    model: str
    i: int = 0
    load_seconds: float = Field(0.0, ge=0)
    run_seconds: float = Field(0.0, ge=0)
    ignore_alarm: bool = False  # block SIGALRM while running: a run stuck where a time limit cannot reach it


class SpinParams(TaskParams):
    i: int = 0
    iterations: int = Field(2_000_000, ge=1)


class CurveParams(TaskParams):
    x: float = 0.5
    y: float = 0.5
    steps: int = Field(27, ge=1)
    step_seconds: float = Field(0.0, ge=0)
    die_at_step: int = Field(0, ge=0)  # the worker process exits at this step (killed-run tests; 0: never)


class TradeoffParams(TaskParams):
    x: float = 0.0
    y: float = 0.0
