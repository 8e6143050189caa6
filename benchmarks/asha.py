"""Early stopping: ASHA against no pruning on a stage where most configurations are hopeless.

The objective is `demo.curve`: score(t) = peak(x, y) * (1 - 0.5^((t+1)/4)) over 27 steps, with a
narrow peak at (0.7, 0.3) in the unit square, so most sampled configurations are hopeless from their
first steps. Both arms search the same space with the same seeded sampler and budget; the figures
are the best final score found and the total steps the trials reported (from the step table).

    ../.venv/bin/python asha.py [--trials 60] [--sampler random] [--executor ray]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))  # Ray workers

from _common import write_spec  # noqa: E402

from orchestrator.api import run_spec  # noqa: E402
from orchestrator.store import load_results, load_steps  # noqa: E402

SPEC = """\
    name: asha-bench
    stages:
      val:
        task: demo.curve
        params: {{steps: 27, step_seconds: {step_seconds}}}
        tune:
          metric: score
          mode: max
          num_samples: {trials}
          sampler: {sampler}
          {scheduler}
          space: {{x: {{uniform: [0.0, 1.0]}}, y: {{uniform: [0.0, 1.0]}}}}
"""


def arm(label: str, scheduler: str, args: argparse.Namespace) -> tuple[float, int, int, float]:
    spec = write_spec(SPEC.format(trials=args.trials, sampler=args.sampler, scheduler=scheduler,
                                  step_seconds=args.step_seconds))
    results = Path(tempfile.mkdtemp(prefix="asha-"))
    start = time.perf_counter()
    run_spec(spec, str(results), executor=args.executor)
    wall = time.perf_counter() - start
    rows = load_results(str(results), "asha-bench", "val")
    steps = len(load_steps(str(results), "asha-bench", "val"))
    best = float(rows[rows.status == "ok"].score.max())
    pruned = int((rows.status == "pruned").sum())
    print(f"  {label}: best score {best:.5f}, steps reported {steps}, pruned {pruned}/{len(rows)}, "
          f"wall {wall:.1f} s", flush=True)
    return best, steps, pruned, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--executor", default="ray", choices=["ray", "inline"])
    parser.add_argument("--step-seconds", type=float, default=0.002)
    args = parser.parse_args()
    print(f"{args.trials} trials, sampler {args.sampler}, executor {args.executor}")
    full_best, full_steps, _, full_wall = arm("no pruning", "", args)
    asha_best, asha_steps, _, asha_wall = arm(
        "asha (grace_period 1, reduction_factor 3)",
        "scheduler: {type: asha, grace_period: 1, reduction_factor: 3}", args)
    gap = (full_best - asha_best) / full_best
    print(f"best: asha {asha_best:.5f} vs no pruning {full_best:.5f}: {100 * gap:.2f}% below (target <= 1%)")
    print(f"steps: asha {asha_steps} vs no pruning {full_steps}: ratio {asha_steps / full_steps:.3f} "
          f"(target <= 0.5); wall ratio {asha_wall / full_wall:.2f}")


if __name__ == "__main__":
    main()
