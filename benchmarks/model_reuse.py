"""Model reuse: a 200-run attribution sweep on one model, warm actors against one model load per run.

    .venv/bin/python benchmarks/model_reuse.py [--runs 200] [--model tiny-gpt2-copy]

Both arms run the same spec through the orchestrator on one local Ray; the baseline sets the worker's
setup cache to 0 entries, so every run loads the model again (as a script per run would, minus
interpreter start-up, which favours the baseline).
"""

from __future__ import annotations

import argparse
import tempfile

from _common import write_spec
from orchestrator import cluster
from orchestrator.runner import RunOptions, run_sweep
from orchestrator.scheduler import SchedulerConfig
from orchestrator.spec import load_spec
from orchestrator.stages import Sweep


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--model", default="tiny-gpt2-copy")
    args = parser.parse_args()
    spec = write_spec(f"""\
        name: reuse
        stages:
          s:
            task: attribution.planted
            params: {{model: {args.model}, method: input_x_gradient, n_examples: 2, seed: {{range: [0, {args.runs}]}}}}
    """)
    cluster.connect()
    warm = Sweep(load_spec(spec, ["seed={range: [1000, 1002]}"]), tempfile.mkdtemp())
    run_sweep(warm)  # builds the model on first use, outside both measurements
    reuse, = run_sweep(Sweep(load_spec(spec), tempfile.mkdtemp()))
    fresh, = run_sweep(Sweep(load_spec(spec), tempfile.mkdtemp()),
                       RunOptions(scheduler=SchedulerConfig(cache_size=0)))
    assert reuse.failed == fresh.failed == 0
    print(f"{args.runs} runs of attribution.planted on {args.model}:")
    print(f"  warm actors: {reuse.wall_s:.2f} s, {reuse.setup_loads} model loads")
    print(f"  one load per run: {fresh.wall_s:.2f} s, {fresh.setup_loads} model loads")
    print(f"  speed-up from reuse: {fresh.wall_s / reuse.wall_s:.1f}x (target >= 5x)")
    cluster.shutdown()


if __name__ == "__main__":
    main()
