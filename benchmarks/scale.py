"""Driver memory and wall time against the number of runs: an N-run no-op stage, end to end.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,50000,200000] [--bare 10000]

Each size runs in a fresh driver process (a local Ray started there first, then the sweep: plan, schedule,
store, timed) that reports its own peak RSS (`ru_maxrss`: the driver only, not Ray's processes). Bare Ray (one
`num_cpus=1` task per run, the better of all-at-once and a window of 100) is measured on `--bare` runs
and extrapolated linearly to each size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

from _common import write_spec
from overhead import bare_ray, bare_ray_all_at_once

from orchestrator import cluster
from orchestrator.api import run_spec


def one_driver(n: int) -> None:
    """Run the n-run stage in this process; print wall and peak RSS as JSON."""
    spec = write_spec(f"name: scale\nstages:\n  s: {{task: demo.noop, params: {{i: {{range: [0, {n}]}}}}}}\n")
    cluster.connect()  # as in overhead.py: the wall is the sweep's (plan, schedule, store), not Ray's start
    try:
        start = time.perf_counter()
        (outcome,) = run_spec(spec, tempfile.mkdtemp(prefix="bench-scale-"))
        wall = time.perf_counter() - start
    finally:
        cluster.shutdown()
    assert outcome.ok == n, outcome
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "wall_s": wall, "peak_rss_mb": peak_mb}))


def bare_per_run(n: int) -> float:
    """Seconds per run of bare Ray, the better of its two patterns, on n runs (after a warm-up)."""
    cluster.connect()
    try:
        bare_ray(200)
        walls = []
        for pattern in (bare_ray, bare_ray_all_at_once):
            start = time.perf_counter()
            pattern(n)
            walls.append(time.perf_counter() - start)
        return min(walls) / n
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--bare", type=int, default=10_000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one driver of this size
    args = parser.parse_args()
    if args.one:
        one_driver(args.one)
        return
    per_run = bare_per_run(args.bare)
    print(f"bare Ray: {per_run * 1e3:.3f} ms per run (measured on {args.bare} runs)")
    for n in (int(s) for s in args.sizes.split(",")):
        done = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        bare = per_run * n
        print(f"  {n:>9} runs: driver peak RSS {figures['peak_rss_mb']:6.0f} MB, wall {figures['wall_s']:7.2f} s; "
              f"bare Ray (extrapolated) {bare:8.1f} s; ratio {figures['wall_s'] / bare:.3f}x (target <= 0.2x)",
              flush=True)


if __name__ == "__main__":
    main()
