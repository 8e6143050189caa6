"""Orchestration overhead: N no-op runs end to end vs the same N bare Ray tasks vs Ray Tune trials.

    .venv/bin/python benchmarks/overhead.py [--runs 10000] [--tune-trials 300]

Everything runs on one local Ray (started here) with the same resources per run (num_cpus=1). Ray Tune
runs fewer trials (it costs tens of ms per trial even with reuse_actors) and is extrapolated linearly.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import ray
from _common import timed, write_spec

from orchestrator import cluster
from orchestrator.api import run_spec


@ray.remote(num_cpus=1)
def noop(i: int) -> dict:
    return {"value": i}


def bare_ray(n: int, window: int = 100) -> None:
    """The best bare-Ray pattern from our notes: a bounded window of ~100 tasks in flight."""
    pending, results, submitted = [], [], 0
    while submitted < n or pending:
        while submitted < n and len(pending) < window:
            pending.append(noop.remote(submitted))
            submitted += 1
        done, pending = ray.wait(pending, num_returns=1)
        results += ray.get(done)
    assert len(results) == n


def bare_ray_all_at_once(n: int) -> None:
    assert len(ray.get([noop.remote(i) for i in range(n)])) == n


def tune_trials(n: int) -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray import tune

    def trainable(config: dict) -> None:
        tune.report({"value": config["i"]})

    tuner = tune.Tuner(
        trainable, param_space={"i": tune.grid_search(list(range(n)))},
        tune_config=tune.TuneConfig(metric="value", mode="max", reuse_actors=True),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), name="bench", verbose=0),
    )
    tuner.fit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--tune-trials", type=int, default=300)
    args = parser.parse_args()
    n = args.runs
    cluster.connect()
    print(f"cluster: {ray.cluster_resources()}")
    bare_ray(200)  # warm the worker pool for everyone
    times: dict[str, float] = {}
    spec = write_spec(f"""\
        name: overhead
        stages:
          s: {{task: demo.noop, resources: {{num_cpus: 1}}, params: {{i: {{range: [0, {n}]}}}}}}
    """)
    results = tempfile.mkdtemp(prefix="bench-results-")
    with timed(f"orchestrator: {n} no-op runs (expand, schedule, store)", times):
        outcome, = run_spec(spec, results)
    assert outcome.ok == n
    with timed(f"bare Ray: {n} tasks, window 100", times):
        bare_ray(n)
    with timed(f"bare Ray: {n} tasks, all at once", times):
        bare_ray_all_at_once(n)
    with timed(f"Ray Tune: {args.tune_trials} trials, reuse_actors", times):
        tune_trials(args.tune_trials)
    ours = times[f"orchestrator: {n} no-op runs (expand, schedule, store)"]
    bare = min(times[f"bare Ray: {n} tasks, window 100"], times[f"bare Ray: {n} tasks, all at once"])
    tune_total = times[f"Ray Tune: {args.tune_trials} trials, reuse_actors"] * n / args.tune_trials
    print(f"\nratio orchestrator / best bare Ray: {ours / bare:.2f}x  (target <= 1.3x)")
    print(f"Ray Tune extrapolated to {n} trials: {tune_total:.0f} s; orchestrator is {tune_total / ours:.0f}x faster"
          "  (target >= 10x)")
    cluster.shutdown()


if __name__ == "__main__":
    main()
