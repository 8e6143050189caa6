"""Demo tasks: cheap, deterministic, and each exercising one part of the orchestrator (params in
`tasks.demo.params`). Not language-model tasks: `demo.lookup`'s setup is a stand-in dict, not an LMSetup."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import time
from typing import Any

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.demo.params import (
    AllocateParams,
    CurveParams,
    FlakyParams,
    LookupParams,
    NoopParams,
    ProduceParams,
    QuadraticParams,
    SleepParams,
    SpinParams,
    TradeoffParams,
    VectorParams,
    VectorSumParams,
)


@task("demo.quadratic", params=QuadraticParams, smoke={"x": 0.5, "y": -1.0, "noise": 0.1})
def quadratic(params: QuadraticParams, ctx: RunContext) -> dict[str, Any]:
    """loss = (x - 1)^2 + (y + 2)^2 plus seeded Gaussian noise: a surface with a known minimum."""
    rng = random.Random(ctx.seed)
    loss = (params.x - 1.0) ** 2 + (params.y + 2.0) ** 2 + params.noise * rng.gauss(0.0, 1.0)
    return {"loss": loss}


@task("demo.noop", params=NoopParams, smoke={"i": 3})
def noop(params: NoopParams, ctx: RunContext) -> dict[str, Any]:
    """Returns its index: the cheapest possible run (overhead benchmarks)."""
    return {"value": params.i}


@task("demo.sleep", params=SleepParams, smoke={"i": 2, "seconds": 0.01}, measured=("t_start", "t_end", "pid"))
def sleep(params: SleepParams, ctx: RunContext) -> dict[str, Any]:
    """Sleeps, then reports when and where it ran (concurrency and placement tests)."""
    start = time.time()
    time.sleep(params.seconds)
    return {
        "value": params.i * params.i,
        "t_start": start,
        "t_end": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "gpu_ids": ",".join(str(g) for g in ctx.gpu_ids),
        "device": ctx.device,
    }


@task("demo.produce", params=ProduceParams, smoke={"i": 2, "wait_s": 0.01}, measured=("t_start", "t_end"))
def produce(params: ProduceParams, ctx: RunContext) -> dict[str, Any]:
    """Sleeps, then writes its index as an artifact (`value.txt`) that any downstream run may read, and
    reports when it ran (streaming-stage tests and benchmarks); raises for every i divisible by
    `fail_if_divisible_by`."""
    start = time.time()
    time.sleep(params.wait_s)
    divisor = params.fail_if_divisible_by
    if divisor and params.i % divisor == 0:
        raise ValueError(f"planted failure for i={params.i}")
    (ctx.artifact_dir / "value.txt").write_text(str(params.i))
    return {"value": params.i, "t_start": start, "t_end": time.time()}


@task("demo.flaky", params=FlakyParams, smoke={"i": 3, "fail_if_divisible_by": 2})
def flaky(params: FlakyParams, ctx: RunContext) -> dict[str, Any]:
    """Raises for chosen inputs (every k-th, or while a marker file exists): failure handling tests."""
    divisor = params.fail_if_divisible_by
    if divisor and params.i % divisor == 0 and (
        params.fail_while_file_exists is None or os.path.exists(params.fail_while_file_exists)
    ):
        raise ValueError(f"planted failure for i={params.i}")
    return {"value": params.i * 10}


@task("demo.allocate", params=AllocateParams, smoke={"megabytes": 2})
def allocate(params: AllocateParams, ctx: RunContext) -> dict[str, Any]:
    """Allocates and touches `megabytes` of memory (memory-limit tests)."""
    block = bytearray(params.megabytes * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    return {"allocated_mb": params.megabytes}


@task("demo.vector", params=VectorParams, smoke={"length": 8, "scale": 2.0})
def vector(params: VectorParams, ctx: RunContext) -> dict[str, Any]:
    """Writes a seeded random vector as an .npy artifact (stage-dependency tests)."""
    import numpy as np

    values = np.random.default_rng(ctx.seed).normal(size=params.length) * params.scale
    np.save(ctx.artifact_dir / "vector.npy", values)
    return {"norm": float(np.linalg.norm(values))}


@task("demo.vector_sum", params=VectorSumParams, smoke={"length": 8, "scale": 2.0, "power": 2},
      smoke_upstream={"vector": ("demo.vector", {"length": 8, "scale": 2.0})})
def vector_sum(params: VectorSumParams, ctx: RunContext) -> dict[str, Any]:
    """Reads the upstream `vector` artifact with the same length and scale; sums its powers."""
    import numpy as np

    upstream = ctx.upstream_one()
    values = np.load(upstream.artifact_dir / "vector.npy")
    return {"total": float(np.sum(values**params.power)), "upstream_run": upstream.run_id}


def load(params: LookupParams, ctx: RunContext) -> dict[str, Any]:
    """A stand-in for an expensive model load: sleeps, then returns a table keyed by the model name."""
    time.sleep(params.load_seconds)
    return {"name": params.model, "loaded_at": time.time(), "pid": os.getpid(),
            "weights": [ord(c) for c in params.model]}


@task("demo.lookup", params=LookupParams, setup=load, setup_keys=("model",),
      smoke={"model": "tiny", "i": 2}, measured=("loaded_at", "pid"))
def lookup(params: LookupParams, ctx: RunContext) -> dict[str, Any]:
    """Uses the model its worker loaded (model-reuse and timeout tests): which model, loaded when, by which
    process; `run_seconds` makes the run itself slow."""
    if params.run_seconds:
        blocked = {signal.SIGALRM} if params.ignore_alarm else set()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            time.sleep(params.run_seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    model = ctx.setup if ctx.setup is not None else load(params, ctx)
    return {
        "served_by": model["name"],
        "value": sum(model["weights"]) * params.i,
        "loaded_at": model["loaded_at"],
        "pid": model["pid"],
    }


@task("demo.spin", params=SpinParams, smoke={"iterations": 1000})
def spin(params: SpinParams, ctx: RunContext) -> dict[str, Any]:
    """A CPU-bound pure-Python loop (parallel speed-up benchmarks)."""
    total = 0
    for k in range(params.iterations):
        total = (total + k * k) % 1_000_003
    return {"checksum": total}


@task("demo.curve", params=CurveParams, smoke={"x": 0.7, "y": 0.3, "steps": 4})
def curve(params: CurveParams, ctx: RunContext) -> dict[str, Any]:
    """A learning curve with a known best config: score(t) = peak * (1 - 0.5^((t+1)/4)), peak =
    exp(-((x-0.7)^2 + (y-0.3)^2) / 0.02), reported at every step (early-stopping tests): in the unit
    square most configs are hopeless and show it from the first steps."""
    peak = math.exp(-((params.x - 0.7) ** 2 + (params.y - 0.3) ** 2) / 0.02)
    score = 0.0
    for step in range(1, params.steps + 1):
        time.sleep(params.step_seconds)
        if step == params.die_at_step:
            os._exit(1)
        score = peak * (1.0 - 0.5 ** ((step + 1) / 4))
        ctx.report(step=step, score=score)
    return {"score": score, "peak": peak}


@task("demo.tradeoff", params=TradeoffParams, smoke={"x": 0.5, "y": 1.0})
def tradeoff(params: TradeoffParams, ctx: RunContext) -> dict[str, Any]:
    """Two objectives with a planted Pareto front (multi-objective tests): gain = x (max), cost = x^2 + y
    (min); with y >= 0 the front is every y = 0 point."""
    return {"gain": params.x, "cost": params.x * params.x + params.y}
