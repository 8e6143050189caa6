"""Executing runs: inside a worker (context, setup cache, per-run memory limit, failure capture), and
the `inline` executor that runs a stage's work in the driver process, one run after another, with no
Ray at all (so `breakpoint()` in a task works, and a machine without Ray can run a sweep).

A failing run is a value (status, error type, message, traceback), never an exception that kills
the chunk or the sweep.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.context import Reporter, RunContext, TrialPruned, Upstream
from orchestrator.registry import TaskDef, resolve_target
from orchestrator.schema import BAD_OUTPUT, FAILED, MEMORY_LIMIT, MISSING_UPSTREAM, OK, PRUNED, TASK_ERROR, TIMEOUT
from orchestrator.spec import Retries
from orchestrator.steps import LocalChannel, StepChannel, StopRule

SCALARS = (str, int, float, bool, type(None))
DEVICE_ENV = "INTERP_SWEEPS_DEVICE"  # the inline executor's device for every run ("cuda", "cuda:1", "cpu")


@dataclass
class RunPayload:
    """What a worker needs to execute one run (small and picklable)."""

    run_id: str
    target: str  # the task's "module:attr": workers import exactly what the driver planned with
    params: dict[str, Any]
    seed: int
    attempt: int
    artifact_root: str | None  # local artifact root of the store, or None for remote stores
    upstream: dict[str, list[Upstream]] = field(default_factory=dict)
    memory_bytes: int | None = None
    timeout_s: float | None = None
    steps: Any = None  # the stage's step broker handle (`ctx.report` goes there), or None
    step_group: str | None = None  # a tune trial's group: the scheduler judges its reports within it


@dataclass
class RunResult:
    run_id: str
    status: str
    rows: list[dict[str, Any]]
    started_at: float
    duration_s: float
    node: str
    gpu: str | None
    attempt: int
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    artifact_dir: str | None = None  # where the artifacts were left, for non-local stores
    warnings: list[str] = field(default_factory=list)  # Python warnings the run raised (the driver logs them)
    steps_reported: int = 0  # `ctx.report` calls the run made


def normalize_rows(output: Any) -> list[dict[str, Any]]:
    """A task's return value as a list of flat dicts of scalars."""
    if output is None:
        return [{}]
    if isinstance(output, dict):
        rows = [output]
    elif hasattr(output, "to_dict") and hasattr(output, "columns"):  # pandas DataFrame
        rows = output.to_dict(orient="records")
    elif hasattr(output, "to_pylist"):  # pyarrow Table
        rows = output.to_pylist()
    elif isinstance(output, list):
        rows = output
    else:
        raise TypeError(f"a task must return a dict, a list of dicts or a table, got {type(output).__name__}")
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"row {i} is a {type(row).__name__}, not a dict")
        fixed = {}
        for key, value in row.items():
            if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
                value = value.item()
            if not isinstance(value, SCALARS):
                raise TypeError(f"row {i} column '{key}' holds a {type(value).__name__}; rows take scalars only")
            if str(key) in fixed:
                raise TypeError(f"row {i} has keys {key!r} and '{key}', which name the same column")
            fixed[str(key)] = value
        clean.append(fixed)
    return clean


def _data_segment_bytes() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextmanager
def memory_limit(limit_bytes: int | None, enabled: bool = True) -> Iterator[None]:
    """Cap the process's data segment at its current size + `limit_bytes` for the duration of a run.

    Ray's `memory=` only reserves; this makes an oversized allocation fail inside the run (MemoryError),
    so it is recorded as `memory_limit` instead of taking the node down. Only the soft limit is lowered
    and it is restored afterwards, so nothing leaks into the next run served by the same worker. Linux
    only; skipped on GPU runs (CUDA maps large private regions).
    """
    current = _data_segment_bytes() if (limit_bytes and enabled) else None
    if current is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    wanted = current + int(limit_bytes)  # type: ignore[arg-type]
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


class RunTimeout(BaseException):
    """Raised inside a run that exceeded its time limit (a BaseException: `except Exception` in a task
    cannot swallow it)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the code inside after `seconds` (SIGALRM, main thread only; elsewhere the driver's
    backstop kills the worker). Code stuck in C without returning to Python is left to the backstop."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise RunTimeout(f"the run exceeded its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify_error(exc: BaseException) -> str:
    if isinstance(exc, RunTimeout):
        return TIMEOUT
    if isinstance(exc, MemoryError):
        return MEMORY_LIMIT
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "CUDA out of memory" in text:
        return MEMORY_LIMIT
    if isinstance(exc, (FileNotFoundError, LookupError)) and "upstream" in text:
        return MISSING_UPSTREAM
    return TASK_ERROR


GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")  # NVIDIA; AMD ROCm (torch says cuda)


def run_device(gpu_ids: list[int]) -> str:
    """`"cuda"` only when Ray assigned GPUs and torch sees a CUDA device; logical GPUs on a CPU host (a local
    Ray with `--num-gpus`) give `"cpu"`, their ids still in `ctx.gpu_ids`. Hosts with no GPU device file
    answer without importing torch."""
    if not gpu_ids or not any(Path(f).exists() for f in GPU_DEVICE_FILES):
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpu_name(gpu_ids: list[int]) -> str | None:
    if not gpu_ids or "torch" not in sys.modules:
        return None
    torch = sys.modules["torch"]
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


class SetupCache:
    """Expensive per-task state (a loaded model), kept per worker, least recently used evicted.

    `capacity=0` keeps nothing: every run sets up afresh (the no-reuse baseline of the benchmarks).
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.loads = 0

    def get(self, task: TaskDef, params: Any, ctx: RunContext) -> Any:
        if task.setup is None:
            return None
        upstream = {stage: [up.run_id for up in runs] for stage, runs in ctx.upstream.items()}
        key = (task.name, task.setup_key(params.model_dump(), upstream))
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        while self.entries and len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)
        state = task.setup(params, ctx)
        self.loads += 1
        if self.capacity:
            self.entries[key] = state
        return state


def execute_run(payload: RunPayload, cache: SetupCache, gpu_ids: list[int], device: str | None = None) -> RunResult:
    """Run one task call and capture everything about it; never raises for task failures.

    `device` (the inline executor's) overrides the one Ray's GPU assignment gives (`run_device`)."""
    started, clock = time.time(), time.perf_counter()
    work = _work_root() / f"{payload.run_id}-{payload.attempt}"
    artifact_tmp, scratch = work / "artifacts", work / "scratch"
    ctx = RunContext(
        run_id=payload.run_id,
        seed=payload.seed,
        artifact_path=artifact_tmp,
        scratch_path=scratch,
        device=device or run_device(gpu_ids),
        gpu_ids=list(gpu_ids),
        upstream=payload.upstream,
    )
    result = RunResult(payload.run_id, OK, [], started, 0.0, node_name(), None, payload.attempt)
    ctx.reporter = _reporter(payload, result)
    keep_work = False
    try:
        task = resolve_target(payload.target)
        params = task.params.model_validate(payload.params)
        for stage, runs in payload.upstream.items():
            for up in runs:
                if not up.artifact_dir.is_dir():
                    raise FileNotFoundError(
                        f"upstream artifacts of stage '{stage}' run {up.run_id} are missing: {up.artifact_dir}"
                    )
        with captured_warnings(result.warnings):
            ctx.setup = cache.get(task, params, ctx)
            with memory_limit(payload.memory_bytes, enabled=not gpu_ids), time_limit(payload.timeout_s):
                output = task.fn(params, ctx)
        try:
            result.rows = normalize_rows(output)
        except TypeError as exc:
            result.status, result.error_type, result.error = FAILED, BAD_OUTPUT, str(exc)
        if result.status == OK and artifact_tmp.is_dir():
            if payload.artifact_root is not None:
                _publish_local(Path(payload.artifact_root) / payload.run_id, artifact_tmp)
            elif any(artifact_tmp.iterdir()):
                result.artifact_dir, keep_work = str(artifact_tmp), True
    except TrialPruned as exc:
        result.status = result.error_type = PRUNED
        result.error, result.rows = str(exc), []
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        result.status = FAILED
        result.error_type = classify_error(exc)
        result.error = f"{type(exc).__name__}: {exc}"[:4000]
        result.traceback = traceback.format_exc()[-20000:]
        result.rows = []
    finally:
        if not keep_work and work.exists():
            shutil.rmtree(work, ignore_errors=True)
    result.duration_s = time.perf_counter() - clock
    result.gpu = _gpu_name(gpu_ids or ([0] if ctx.device.startswith("cuda") else []))
    return result


@contextmanager
def captured_warnings(into: list[str]) -> Iterator[None]:
    """Record the Python warnings raised inside (each distinct one once) as `file:line: Category: message`,
    instead of printing them in the worker, so the driver can log them with the run id."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for w in caught:
                text = f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
                if text not in into:
                    into.append(text)


def _reporter(payload: RunPayload, result: RunResult) -> Reporter | None:
    """`ctx.report` of this run: to the stage's broker (None: the run's context keeps the reports)."""
    broker = payload.steps
    if broker is None:
        return None

    def report(step: int, metrics: dict[str, Any]) -> bool:
        result.steps_reported += 1
        return bool(broker.report(payload.run_id, payload.attempt, payload.step_group, step, metrics))

    return report


_WORK_ROOT: Path | None = None


def _work_root() -> Path:
    """One temporary directory per worker process, under which runs get their directories on demand."""
    global _WORK_ROOT
    if _WORK_ROOT is None:
        _WORK_ROOT = Path(tempfile.mkdtemp(prefix="orchestrator-worker-"))
    return _WORK_ROOT


def _publish_local(target: Path, source: Path) -> None:
    if not any(source.iterdir()):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(source), str(target))


def node_name() -> str:
    """host:ray-node-id (short), unique per node even when several nodes share a host."""
    host = socket.gethostname()
    if sys.modules.get("ray") is None:  # not imported (or blocked: None)
        return host
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a local Ray (seconds) in the driver
        return host
    try:
        return f"{host}:{ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:
        return host


def current_gpu_ids() -> list[int]:
    """GPU ids Ray assigned to this worker ([] outside Ray or without GPUs)."""
    if sys.modules.get("ray") is None:  # not imported (or blocked: None)
        return []
    import ray

    if not ray.is_initialized():
        return []
    try:
        return [int(g) for g in ray.get_gpu_ids()]
    except Exception:
        return []


def execute_chunk(payloads: list[RunPayload], cache: SetupCache) -> list[RunResult]:
    gpu_ids = current_gpu_ids()
    return [execute_run(p, cache, gpu_ids) for p in payloads]


_WORKER_CACHE = SetupCache()


def worker_cache() -> SetupCache:
    """The setup cache of this worker process (stateless Ray tasks share it across calls)."""
    return _WORKER_CACHE


# ---------------------------------------------------------------- work handed to an executor


@dataclass
class WorkItem:
    """One run to execute, with what the scheduler tracks about it."""

    payload: RunPayload
    setup_key: Any = None
    system_failures: int = 0
    errors: int = 0


class WorkSource(Protocol):
    """Where an executor pulls a stage's work from: its runs (each once the upstream runs it reads are
    stored), or a search that proposes as it learns."""

    @property
    def exhausted(self) -> bool:
        """No item will ever come again."""
        ...

    @property
    def remaining(self) -> int:
        """Items still to come (an estimate for a search); sizes chunks."""
        ...

    def take(self, n: int) -> list[WorkItem]:
        """Up to `n` items ready now (fewer, or none, while a search or an upstream stage is not done)."""
        ...


OnResult = Callable[[WorkItem, RunResult], None]


@dataclass(frozen=True)
class StageExecution:
    """What an executor needs to know about a stage to run its work."""

    task: TaskDef
    resources: Any  # spec.Resources
    retries: Retries
    max_workers: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Lane:
    """One stage's share of an executor's work: several lanes run at once when stages stream."""

    stage: StageExecution
    source: WorkSource
    on_result: OnResult


def retry_as_system_failure(item: WorkItem, result: RunResult, retries: Retries) -> bool:
    """A timed-out run is retried like a worker death (`retries.system`), not like an exception."""
    return result.error_type == TIMEOUT and item.system_failures < retries.system


def retry_as_error(item: WorkItem, result: RunResult, retries: Retries) -> bool:
    """An exception in the task is retried `retries.errors` times (a pruned run is final, not a failure)."""
    return result.status == FAILED and result.error_type != TIMEOUT and item.errors < retries.errors


class InlineExecutor:
    """Runs every run in this process, one after another: no Ray, same rows, same store, same resume.

    Exceptions are retried `retries.errors` times as on Ray; there are no system failures to retry
    (a crash here is a crash of the driver). The memory limit is not applied: it would cap the driver.

    The runs' `ctx.device`: `device` if given, else $INTERP_SWEEPS_DEVICE if set, else, as on Ray, "cuda"
    for a stage that reserves GPUs (`resources.num_gpus`) when torch sees one, and "cpu" otherwise.
    """

    name = "inline"

    def __init__(self, device: str | None = None) -> None:
        self.cache = SetupCache()
        self.device = device or os.environ.get(DEVICE_ENV) or None

    def run_device(self, resources: Any) -> str:
        """The device this executor's runs of a stage with these `resources` get."""
        if self.device:
            return self.device
        return run_device([0] if getattr(resources, "num_gpus", 0) else [])

    def slots(self, resources: Any) -> int:
        return 1

    def step_channel(self, rule: StopRule | None) -> StepChannel:
        return LocalChannel(rule)

    def run(self, lanes: Sequence[Lane], on_tick: Callable[[], None] | None = None) -> list[int]:
        """Drive every item of every lane to a final result; returns each lane's setups (model loads).

        The most downstream lane with an item ready goes first, so a streamed stage's rows land early.
        """
        loads = [0] * len(lanes)
        while True:
            open_lanes = [i for i, lane in enumerate(lanes) if not lane.source.exhausted]
            if not open_lanes:
                return loads
            for i in reversed(open_lanes):
                items = lanes[i].source.take(1)
                if items:
                    break
            else:
                raise RuntimeError("the work sources have nothing to run and nothing in flight")
            before = self.cache.loads
            self._execute(lanes[i], items[0])
            loads[i] += self.cache.loads - before
            if on_tick:
                on_tick()

    def _execute(self, lane: Lane, item: WorkItem) -> None:
        """One run, retried as on Ray, its final result handed to the lane."""
        while True:
            payload = RunPayload(**{**item.payload.__dict__, "memory_bytes": None})
            result = execute_run(payload, self.cache, [], device=self.run_device(lane.stage.resources))
            if retry_as_system_failure(item, result, lane.stage.retries):
                item.system_failures += 1
                item.payload.attempt += 1
                time.sleep(min(lane.stage.retries.backoff_s * 2 ** (item.system_failures - 1), 60.0))
                continue
            if retry_as_error(item, result, lane.stage.retries):
                item.errors += 1
                item.payload.attempt += 1
                time.sleep(min(lane.stage.retries.backoff_s * 2 ** (item.errors - 1), 60.0))
                continue
            lane.on_result(item, result)
            return
