"""The Python entry points behind the CLI: open a sweep as one plan, and run it with an executor.

```python
from orchestrator.api import run_spec
outcomes = run_spec("sweeps/quickstart.yaml", "results", ["x=0.5"], executor="inline")
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import cluster
from orchestrator.errors import UsageError
from orchestrator.execute import InlineExecutor
from orchestrator.plan import SweepPlan, build_plan
from orchestrator.runner import Executor, ProgressSink, RunOptions, StageOutcome, run_sweep
from orchestrator.spec import load_spec
from orchestrator.store import ResultStore

if TYPE_CHECKING:
    from orchestrator.scheduler import SchedulerConfig

EXECUTORS = ("ray", "inline")


def open_sweep(spec: str | Path, results: str | os.PathLike[str] | None = None,
               overrides: list[str] | None = None) -> tuple[SweepPlan, ResultStore]:
    """The sweep's plan (loaded, expanded and validated once) and its store (`results`, else the spec's
    `results:`, else ./results)."""
    loaded = load_spec(spec, overrides or [])
    return build_plan(loaded), ResultStore(results or loaded.spec.results or "results", loaded.name)


class Connector:
    """Makes the executor a run needs, the first time a stage has work; remembers whether it started Ray."""

    def __init__(self, plan: SweepPlan, executor: str = "ray", address: str | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None, stages: list[str] | None = None,
                 scheduler: SchedulerConfig | None = None) -> None:
        if executor not in EXECUTORS:
            raise UsageError(f"--executor {executor}: unknown executor (choose one of {', '.join(EXECUTORS)})")
        self.plan, self.executor, self.address = plan, executor, address
        self.num_cpus, self.num_gpus, self.scheduler = num_cpus, num_gpus, scheduler
        self.stages = stages or plan.order
        self.started_ray = False

    def __call__(self) -> Executor:
        if self.executor == "inline":
            return InlineExecutor()
        # Ray is imported only for the Ray executor: `plan` and `--executor inline` run without it.
        cluster.set_ray_environment()  # before `ray` is imported: it reads some of these once
        from orchestrator.scheduler import RayExecutor

        self.started_ray = cluster.connect(self.address, self.num_cpus, self.num_gpus,
                                           task_targets=self.plan.task_targets())
        nodes = cluster.alive_nodes()
        for name in self.stages:
            cluster.check_feasible(name, self.plan.stages[name].resources, nodes)
        return RayExecutor(self.scheduler)

    def close(self) -> None:
        if self.started_ray:
            cluster.shutdown()
            self.started_ray = False


def run_spec(spec: str | Path, results: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
             options: RunOptions | None = None, executor: str = "ray", progress: ProgressSink | None = None,
             scheduler: SchedulerConfig | None = None) -> list[StageOutcome]:
    """Plan and run a sweep; a Ray started here (none was up) is shut down at the end."""
    plan, store = open_sweep(spec, results, overrides)
    options = options or RunOptions()
    connector = Connector(plan, executor, stages=options.stages, scheduler=scheduler)
    try:
        return run_sweep(plan, store, connector, options, progress)
    finally:
        connector.close()
