"""The same 50-trial TPE search three ways: this orchestrator, Ray Tune + OptunaSearch, plain Optuna.

Objective: `demo.quadratic`, loss = (x - 1)^2 + (y + 2)^2, x in [-3, 5], y in [-4, 2] (minimum 0 at
(1, -2)). Every arm runs one trial at a time with TPESampler(seed=0): the orchestrator's `tune.seed`
is chosen so that its group seed (tune.group_seed) is 0 as well, so with one trial in flight it asks
the same sampler the same questions as plain Optuna. Printed: wall time and best loss per arm, and
the ratios to plain Optuna. The Ray arms include starting and stopping a local Ray (as a command does).

    ../.venv/bin/python tune_anchors.py [--trials 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))  # Ray workers
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

from _common import write_spec  # noqa: E402

SPEC = """\
    name: anchors
    stages:
      val:
        task: demo.quadratic
        params: {{}}
        tune:
          metric: loss
          mode: min
          num_samples: {trials}
          max_concurrent: 1
          seed: {seed}
          sampler: tpe
          space: {{x: {{uniform: [-3.0, 5.0]}}, y: {{uniform: [-4.0, 2.0]}}}}
"""


def loss(x: float, y: float) -> float:
    return (x - 1.0) ** 2 + (y + 2.0) ** 2


def orchestrator_arm(trials: int, executor: str = "ray") -> tuple[float, float]:
    from orchestrator.api import run_spec
    from orchestrator.store import load_results

    seed = (-zlib.crc32(b"{}")) % 2**31  # group seed (seed + crc32 of the group key "{}") == 0
    spec = write_spec(SPEC.format(trials=trials, seed=seed))
    results = tempfile.mkdtemp(prefix="anchors-")
    start = time.perf_counter()
    run_spec(spec, results, executor=executor)  # ray: a local Ray started and stopped inside, as `run` does
    wall = time.perf_counter() - start
    return wall, float(load_results(results, "anchors", "val").loss.min())


def ray_tune_arm(trials: int) -> tuple[float, float]:
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")

    def trainable(config: dict[str, float]) -> None:
        tune.report({"loss": loss(config["x"], config["y"])})

    search = OptunaSearch(metric="loss", mode="min", sampler=optuna.samplers.TPESampler(seed=0))
    tuner = tune.Tuner(
        trainable, param_space={"x": tune.uniform(-3.0, 5.0), "y": tune.uniform(-4.0, 2.0)},
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="tune-"), name="anchors", verbose=0),
    )
    best = tuner.fit().get_best_result(metric="loss", mode="min").metrics["loss"]
    ray.shutdown()
    return time.perf_counter() - start, float(best)


def optuna_arm(trials: int) -> tuple[float, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: loss(t.suggest_float("x", -3.0, 5.0), t.suggest_float("y", -4.0, 2.0)), n_trials=trials)
    return time.perf_counter() - start, float(study.best_value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    figures = {}
    arms = (("plain optuna", optuna_arm), ("orchestrator (ray executor)", orchestrator_arm),
            ("orchestrator (inline executor)", lambda n: orchestrator_arm(n, "inline")),
            ("ray.tune.Tuner + OptunaSearch", ray_tune_arm))
    for label, arm in arms:
        figures[label] = arm(args.trials)
        print(f"  {label}: wall {figures[label][0]:.2f} s, best loss {figures[label][1]:.6f}", flush=True)
    base_wall, base_best = figures["plain optuna"]
    for label, (wall, best) in figures.items():
        print(f"{label}: wall x{wall / base_wall:.1f} of plain optuna, best {best:.6f} "
              f"({'same as' if abs(best - base_best) < 1e-9 else 'differs from'} plain optuna's {base_best:.6f})")
    orch, ray_tune = figures["orchestrator (ray executor)"], figures["ray.tune.Tuner + OptunaSearch"]
    print(f"ray tune / orchestrator wall: {ray_tune[0] / orch[0]:.2f}x")


if __name__ == "__main__":
    main()
