"""Submitting runs to Ray: bounded windows, run fusion, warm-model actors, retries with backoff.

- Stateless tasks: each Ray task executes a *chunk* of runs; the chunk grows until it holds about
  `target_chunk_s` of work, so 10,000 millisecond runs cost far less than 10,000 bare Ray tasks.
- Tasks with a `setup` (a model): a pool of long-lived actors, each keeping its loaded setups; a chunk
  of runs sharing a setup key goes to the actor that already holds that key when one is free.
- Stages that stream (a downstream stage starting before its upstream stage ends) share one loop
  (`drive`): one scheduler per stage, each with its own window, the cluster shared by Ray.
- System failures (worker or node died, OOM kill) are retried up to `retries.system` times with
  exponential backoff, one run per task so a poison run cannot take its neighbours down; exceptions
  in the task are retried only `retries.errors` times. A run that still fails becomes a failure row.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator import cluster
from orchestrator.execute import (
    Lane,
    OnResult,
    RunPayload,
    RunResult,
    SetupCache,
    StageExecution,
    WorkItem,
    WorkSource,
    execute_chunk,
    retry_as_error,
    retry_as_system_failure,
    worker_cache,
)
from orchestrator.schema import FAILED, TIMEOUT
from orchestrator.spec import Resources
from orchestrator.steps import StepBroker, StepChannel, StopRule

ACTOR_START_S = 5.0  # about what a new warm-model actor costs (process, torch and transformers, a small model)
SYSTEM_ERRORS = {
    "OutOfMemoryError": "out_of_memory",
    "NodeDiedError": "node_died",
    "WorkerCrashedError": "worker_died",
    "ActorDiedError": "worker_died",
    "ActorUnavailableError": "worker_died",
    "ObjectLostError": "object_lost",
    "OwnerDiedError": "object_lost",
    "TaskUnschedulableError": "unschedulable",
    "ActorUnschedulableError": "unschedulable",
}


@ray.remote
def _run_chunk(payloads: list[RunPayload]) -> list[RunResult]:
    return execute_chunk(payloads, worker_cache())


@ray.remote
class RunWorker:
    """A long-lived worker that keeps expensive setups (models) between runs."""

    def __init__(self, cache_size: int) -> None:
        self.cache = SetupCache(cache_size)

    def execute(self, payloads: list[RunPayload]) -> list[RunResult]:
        return execute_chunk(payloads, self.cache)

    def setup_loads(self) -> int:
        return self.cache.loads


_BrokerActor: Any = ray.remote(num_cpus=0, max_restarts=0)(StepBroker)


class _BrokerHandle:
    """What a worker holds of the stage's broker actor: each report is one synchronous call (~1 ms)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def report(self, run_id: str, attempt: int, group: str | None, step: int, metrics: dict[str, Any]) -> bool:
        return bool(ray.get(self.actor.report.remote(run_id, attempt, group, step, metrics)))


class RayChannel:
    """The driver's side of a stage's broker actor: drained without blocking on every scheduling tick.

    The actor is created without waiting for it, so a stage whose runs never report pays no start-up
    wait (`close` kills it; `drain(wait=True)` at the end waits only when some run reported). It lives on
    the driver's node: losing a worker node (a preempted machine, say) must not take the stage's reports
    and the sweep with it.
    """

    def __init__(self, rule: StopRule | None) -> None:
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.actor: Any = _BrokerActor.options(scheduling_strategy=here).remote(rule)
        self.worker_handle = _BrokerHandle(self.actor)
        self.pending: Any = None

    def drain(self, wait: bool = False) -> list[dict[str, Any]]:
        if wait:
            rows: list[dict[str, Any]] = ray.get(self.pending) if self.pending is not None else []
            self.pending = None
            return rows + list(ray.get(self.actor.drain.remote()))
        if self.pending is None:
            self.pending = self.actor.drain.remote()
            return []
        ready, _ = ray.wait([self.pending], timeout=0)
        if not ready:
            return []
        rows = list(ray.get(self.pending))
        self.pending = self.actor.drain.remote()
        return rows

    def finished(self, group: str, run_id: str, state: str, value: float | None) -> None:
        self.actor.finished.remote(group, run_id, state, value)

    def close(self) -> None:
        ray.kill(self.actor, no_restart=True)


@dataclass
class SchedulerConfig:
    target_chunk_s: float = 0.25
    max_chunk: int = 512
    chunks_per_slot: int = 4
    cache_size: int = 2
    timeout_grace_s: float = 30.0  # beyond a run's timeout_s before the backstop kills its worker


@dataclass
class _Chunk:
    items: list[WorkItem]
    actor: Any = None
    submitted: float = field(default_factory=time.perf_counter)


def _system_error_type(exc: BaseException) -> str | None:
    for klass in type(exc).__mro__:
        if klass.__name__ in SYSTEM_ERRORS:
            return SYSTEM_ERRORS[klass.__name__]
    if isinstance(exc, RayTaskError):
        return None
    return "ray_error" if isinstance(exc, RayError) else None


class RayExecutor:
    """The default executor: each stage's work on the Ray cluster `cluster.connect` attached to."""

    name = "ray"

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()

    def slots(self, resources: Resources) -> int:
        return max(1, cluster.capacity(resources))

    def step_channel(self, rule: StopRule | None) -> StepChannel:
        return RayChannel(rule)

    def run(self, lanes: Sequence[Lane], on_tick: Callable[[], None] | None = None) -> list[int]:
        """Drive every item of every lane to a final result; returns each lane's setups (model loads)."""
        schedulers = [StageScheduler(lane.stage, self.slots(lane.stage.resources), lane.source, lane.on_result,
                                     self.config) for lane in lanes]
        drive(schedulers, on_tick)
        return [scheduler.setup_loads for scheduler in schedulers]


def drive(schedulers: list[StageScheduler], on_tick: Callable[[], None] | None = None) -> None:
    """Run several stages' schedulers in one loop (stages that stream), each until its source is done.

    A stage that is done releases its actors at once: a stage still running may need their resources.
    """
    active = list(schedulers)
    while True:
        for scheduler in active:
            scheduler.fill()
        for scheduler in [s for s in active if s.done]:
            scheduler.close()
            active.remove(scheduler)
        if not active:
            return
        owners = {ref: scheduler for scheduler in active for ref in scheduler.in_flight}
        if not owners:
            retry_at = min((s.retry_heap[0][0] for s in active if s.retry_heap), default=None)
            if retry_at is None:
                raise RuntimeError("the work sources have nothing to run and nothing in flight")
            time.sleep(max(0.0, min(0.5, retry_at - time.perf_counter())))
            continue
        refs = list(owners)
        ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        if ready and len(refs) > 1:
            more, _ = ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - 1, timeout=0)
            ready += more
        for ref in ready:
            owners[ref].collect(ref)
        for scheduler in active:
            scheduler.stop_overdue()
        if on_tick:
            on_tick()


class StageScheduler:
    """Executes one stage's work items on Ray and hands every final `RunResult` to `on_result`."""

    def __init__(
        self,
        stage: StageExecution,
        slots: int,
        source: WorkSource,
        on_result: OnResult,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.task, self.resources, self.retries = stage.task, stage.resources, stage.retries
        self.timeout_s = stage.timeout_s
        self.config = config or SchedulerConfig()
        max_workers = stage.max_workers
        self.slots = max(1, min(slots, max_workers) if max_workers else slots)
        self.max_workers = max_workers
        self.source, self.on_result = source, on_result
        self.uses_actors = self.task.setup is not None
        self.options = cluster.ray_options(self.resources)
        self.mean_run_s: float | None = None
        self.retry_heap: list[tuple[float, int, WorkItem]] = []
        self.counter = itertools.count()
        self.in_flight: dict[Any, _Chunk] = {}
        self.actors: list[Any] = []
        self.actor_load: dict[Any, int] = {}
        self.actor_key: dict[Any, Any] = {}
        self.setup_loads = 0
        self.queued: dict[Any, deque[WorkItem]] = {}  # setup key -> items waiting (actors) or one queue
        self.lookahead = 0  # items taken from the source, not yet submitted
        # max_workers is a hard cap on concurrent runs; otherwise keep a few chunks queued per slot
        # With a time limit nothing queues behind a running chunk, so a chunk's clock starts when it runs.
        self.window = self.max_workers or self.slots * (1 if self.timeout_s else self.config.chunks_per_slot)

    # ---------------------------------------------------------------- sizing
    def _chunk_size(self, remaining: int) -> int:
        if self.mean_run_s is None or self.timeout_s:  # a run with a time limit goes alone
            return 1
        size = int(self.config.target_chunk_s / max(self.mean_run_s, 1e-6))
        fair = -(-remaining // self.slots)  # keep every slot busy near the end
        return max(1, min(size, self.config.max_chunk, fair))

    def _observe(self, results: list[RunResult]) -> None:
        for result in results:
            d = result.duration_s
            self.mean_run_s = d if self.mean_run_s is None else 0.8 * self.mean_run_s + 0.2 * d

    # ---------------------------------------------------------------- submission
    def _submit_stateless(self, items: list[WorkItem]) -> None:
        ref = _run_chunk.options(**self.options, max_retries=0).remote([i.payload for i in items])
        self.in_flight[ref] = _Chunk(items)

    def _new_actor(self) -> Any:
        actor = RunWorker.options(**self.options, max_restarts=0).remote(  # type: ignore[attr-defined]
            self.config.cache_size)
        self.actors.append(actor)
        self.actor_load[actor] = 0
        return actor

    def _drop_actor(self, actor: Any) -> None:
        if actor in self.actor_load:
            self.actors.remove(actor)
            del self.actor_load[actor]
            self.actor_key.pop(actor, None)
            ray.kill(actor, no_restart=True)

    def _submit_actor(self, actor: Any, items: list[WorkItem]) -> None:
        ref = actor.execute.remote([i.payload for i in items])
        self.in_flight[ref] = _Chunk(items, actor)
        self.actor_load[actor] += 1
        self.actor_key[actor] = items[0].setup_key

    # ---------------------------------------------------------------- the loop
    @property
    def done(self) -> bool:
        """Every item of the source has had its final result."""
        return not self.in_flight and not self.queued and not self.retry_heap and self.source.exhausted

    def fill(self) -> None:
        """Submit chunks until the window is full or nothing is ready (due retries first)."""
        now = time.perf_counter()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, item = heapq.heappop(self.retry_heap)
            self.queued.setdefault(item.setup_key, deque()).appendleft(item)
            self.lookahead += 1
        while len(self.in_flight) < self.window:
            size = self._chunk_size(max(self.source.remaining + self.lookahead, 1))
            if not self.source.exhausted and self.lookahead < max(size * 2, 64):
                self._pull(max(size * 4, 256))
            if not self.queued:
                break
            if not self._dispatch(size):
                break

    def _pull(self, n: int) -> None:
        items = self.source.take(n)
        for item in items:
            self.queued.setdefault(item.setup_key, deque()).append(item)
        self.lookahead += len(items)

    def _take(self, key: Any, n: int) -> list[WorkItem]:
        queue = self.queued[key]
        if queue[0].system_failures:  # a retried run goes alone: it may be what killed the worker
            n = 1
        chunk = [queue.popleft() for _ in range(min(n, len(queue)))]
        if not queue:
            del self.queued[key]
        self.lookahead -= len(chunk)
        return chunk

    def close(self) -> None:
        """Count the actors' setups, then release them (and the resources they hold)."""
        self.setup_loads = self.actor_setup_loads()
        for actor in list(self.actors):
            self._drop_actor(actor)

    def _dispatch(self, size: int) -> bool:
        """Submit one chunk; False when nothing can be submitted now."""
        if not self.uses_actors:
            key = next(iter(self.queued))
            self._submit_stateless(self._take(key, size))
            return True
        free = [a for a in self.actors if self.actor_load[a] < (1 if self.timeout_s else 2)]
        idle = [a for a in free if self.actor_load[a] == 0]
        busy_keys = {self.actor_key.get(a) for a in self.actors if self.actor_load[a] > 0}
        # 1. an idle actor already holding a queued key
        for actor in idle:
            key = self.actor_key.get(actor, _NO_KEY)
            if key in self.queued:
                self._submit_actor(actor, self._take(key, size))
                return True
        # 2. a new actor while the pool may grow: for a key nobody serves, or for work that would
        # otherwise wait behind a running chunk for longer than a new actor takes to start
        unserved = [k for k in self.queued if k not in busy_keys] or list(self.queued)
        key = max(unserved, key=lambda k: len(self.queued[k]))
        if len(self.actors) < self.slots and (key not in busy_keys or not self._short_work(key, size)):
            self._submit_actor(self._new_actor(), self._take(key, size))
            return True
        # 3. a busy actor holding a queued key: the next chunk queues behind its running one
        for actor in free:
            held = self.actor_key.get(actor, _NO_KEY)
            if held in self.queued:
                self._submit_actor(actor, self._take(held, size))
                return True
        if idle:
            self._submit_actor(idle[0], self._take(key, size))
            return True
        return False

    def _short_work(self, key: Any, size: int) -> bool:
        """Whether the key's queued runs are at most one chunk and, by the runs seen so far, take less than
        starting another actor (which loads the model again) would save."""
        queued = len(self.queued[key])
        return queued <= size and self.mean_run_s is not None and self.mean_run_s * queued < ACTOR_START_S

    def collect(self, ref: Any) -> None:
        """Handle a finished chunk: final results to `on_result`, retries to the retry heap."""
        chunk = self.in_flight.pop(ref)
        if chunk.actor is not None and chunk.actor in self.actor_load:
            self.actor_load[chunk.actor] -= 1
        try:
            results = ray.get(ref)
        except Exception as exc:
            if chunk.actor is not None:
                self._drop_actor(chunk.actor)
            self._system_failure(chunk.items, exc)
            return
        self._observe(results)
        if chunk.actor is not None and any(r.error_type == TIMEOUT for r in results):
            self._drop_actor(chunk.actor)  # interrupted mid-run: its setup may be left half-changed; reload
        for item, result in zip(chunk.items, results, strict=True):
            if retry_as_system_failure(item, result, self.retries):
                item.system_failures += 1
                item.payload.attempt += 1
                self._schedule_retry(item, item.system_failures)
                continue
            if retry_as_error(item, result, self.retries):
                item.errors += 1
                item.payload.attempt += 1
                self._schedule_retry(item, item.errors)
                continue
            self.on_result(item, result)

    def stop_overdue(self) -> None:
        """The backstop for runs a worker could not interrupt (stuck outside Python): a chunk still running
        well past its time limit has its worker killed (an actor is replaced, its model reloaded), and its
        runs are failures of type `timeout`, retried as system failures."""
        if not self.timeout_s:
            return
        grace = max(self.config.timeout_grace_s, self.timeout_s)  # queueing and setup (a model load) first
        now = time.perf_counter()
        for ref, chunk in list(self.in_flight.items()):
            if now - chunk.submitted <= self.timeout_s * len(chunk.items) + grace:
                continue
            del self.in_flight[ref]
            if chunk.actor is not None:
                self._drop_actor(chunk.actor)
            else:
                ray.cancel(ref, force=True)
            self._system_failure(chunk.items, TimeoutError(
                f"the run exceeded its timeout of {self.timeout_s:g} s and its worker was killed"), TIMEOUT)

    def _system_failure(self, items: list[WorkItem], exc: BaseException, error_type: str | None = None) -> None:
        error_type = error_type or _system_error_type(exc) or "worker_error"
        for item in items:
            if item.system_failures < self.retries.system:
                item.system_failures += 1
                item.payload.attempt += 1
                self._schedule_retry(item, item.system_failures)
                continue
            message = f"{type(exc).__name__}: {exc}"
            self.on_result(item, RunResult(
                run_id=item.payload.run_id, status=FAILED, rows=[], started_at=time.time(), duration_s=0.0,
                node="", gpu=None, attempt=item.payload.attempt, error_type=error_type,
                error=message.splitlines()[0][:4000], traceback=message[-20000:],
            ))

    def _schedule_retry(self, item: WorkItem, tries: int) -> None:
        delay = min(self.retries.backoff_s * 2 ** (tries - 1), 60.0)
        heapq.heappush(self.retry_heap, (time.perf_counter() + delay, next(self.counter), item))

    def actor_setup_loads(self) -> int:
        """How many setups (model loads) the live actors performed."""
        try:
            return sum(ray.get([a.setup_loads.remote() for a in self.actors], timeout=30)) if self.actors else 0
        except RayError:
            return 0


_NO_KEY = object()
