"""Model reuse: a 200-run attribution sweep on one model, warm actors against one model load per run.

    .venv/bin/python benchmarks/model_reuse.py [--runs 200] [--model tiny-gpt2-copy] [--script-runs 10]

Three arms on the same spec:
- the orchestrator with warm actors (one load per actor);
- the orchestrator with the worker's setup cache set to 0 entries (one load per run, same processes);
- a fresh Python process per run, as a bash loop over a script does (imports + load + run), measured on
  `--script-runs` runs and extrapolated.
Each arm's wall time includes its actors' start-up (importing torch and transformers in a new process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_spec

from orchestrator import cluster
from orchestrator.api import run_spec
from orchestrator.scheduler import SchedulerConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--model", default="tiny-gpt2-copy")
    parser.add_argument("--script-runs", type=int, default=10)
    args = parser.parse_args()
    spec = write_spec(f"""\
        name: reuse
        stages:
          s:
            task: attribution.planted
            params: {{model: {args.model}, method: input_x_gradient, n_examples: 2, seed: {{range: [0, {args.runs}]}}}}
    """)
    cluster.connect()
    run_spec(spec, tempfile.mkdtemp(), ["seed={range: [1000, 1002]}"])  # builds the model
    reuse, = run_spec(spec, tempfile.mkdtemp())
    fresh, = run_spec(spec, tempfile.mkdtemp(), scheduler=SchedulerConfig(cache_size=0))
    assert reuse.failed == fresh.failed == 0
    cluster.shutdown()
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from orchestrator.context import local_context\n"
        "from orchestrator.registry import get_task\n"
        "t = get_task('attribution.planted')\n"
        f"p = t.params(model='{args.model}', method='input_x_gradient', n_examples=2, seed=int(sys.argv[1]))\n"
        "ctx = local_context(); ctx.setup = t.setup(p, ctx); t.fn(p, ctx)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.perf_counter()
    for seed in range(args.script_runs):
        subprocess.run([sys.executable, "-c", script, str(seed)], check=True, env=env, capture_output=True)
    per_script = (time.perf_counter() - start) / args.script_runs
    print(f"{args.runs} runs of attribution.planted (input_x_gradient) on {args.model}:")
    print(f"  orchestrator, warm actors: {reuse.wall_s:.2f} s, {reuse.setup_loads} model loads")
    print(f"  orchestrator, one load per run: {fresh.wall_s:.2f} s, {fresh.setup_loads} model loads "
          f"-> reuse is {fresh.wall_s / reuse.wall_s:.1f}x faster")
    print(f"  a fresh process per run (bash loop): {per_script:.2f} s per run, {per_script * args.runs:.0f} s "
          f"for {args.runs} (extrapolated from {args.script_runs}) -> reuse is "
          f"{per_script * args.runs / reuse.wall_s:.1f}x faster (target >= 5x)")


if __name__ == "__main__":
    main()
