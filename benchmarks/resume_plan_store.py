"""Resume cost, plan at scale, Parquet store throughput, and parallel speed-up.

    .venv/bin/python benchmarks/resume_plan_store.py [--runs 10000] [--plan-points 1000000]

- Resume: re-running a finished N-run sweep with the CLI (a fresh process, as a user would): runs
  executed and wall time, against a bare `python -c pass` start-up as the floor.
- Plan at scale: `orchestrator plan` of a 1,000,000-point spec (streaming expansion, validation, run
  ids): wall time and peak memory of that process.
- Store: rows written and read back per second, and Parquet files for the N-run sweep.
- Parallel speed-up: a CPU-bound sweep (demo.spin) with max_workers 2 against max_workers 1.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import timed, write_spec

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def child(args: list[str]) -> tuple[float, float, str]:
    """Run a command; wall seconds, peak RSS (MB) of that child, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=REPO)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-2000:])
    return wall, max(peak, before) / 1024, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--plan-points", type=int, default=1_000_000)
    parser.add_argument("--spin", type=int, default=15_000_000, help="iterations per CPU-bound run")
    args = parser.parse_args()
    times: dict[str, float] = {}
    results = tempfile.mkdtemp(prefix="bench-results-")

    n = args.runs
    spec = write_spec(f"""\
        name: resume
        stages:
          s: {{task: demo.noop, params: {{i: {{range: [0, {n}]}}}}}}
    """)
    first, _, _ = child([*CLI, "run", str(spec), "--results", results, "--num-cpus", "2"])
    print(f"first run of {n} no-op runs (CLI, incl. Ray start): {first:.1f} s")
    floor, _, _ = child([sys.executable, "-c", "pass"])
    wall, _, out = child([*CLI, "run", str(spec), "--results", results])
    executed = out.split("executed ")[1].split(" runs")[0]
    print(f"resume of a finished {n}-run sweep: {executed} runs executed, {wall:.2f} s wall (target <= 3 s; "
          f"python start-up alone {floor:.2f} s)")

    parts = sorted((Path(results) / "resume" / "s").glob("part-*.parquet"))
    print(f"store: {len(parts)} Parquet files for {n} runs")
    from orchestrator.store import ResultStore

    store = ResultStore(tempfile.mkdtemp(), "store")
    rows = [{"run_id": f"{i:016x}", "status": "ok", "attempt": 1, "i": i, "value": i * 0.5, "model": "m"}
            for i in range(200_000)]
    with timed("write 200,000 rows in 20 parts", times):
        for k in range(20):
            store.write_rows("s", rows[k * 10_000:(k + 1) * 10_000])
    with timed("read them back (latest attempts)", times):
        table = store.read_stage("s")
    assert table.num_rows == 200_000
    print(f"store: {200_000 / times['write 200,000 rows in 20 parts']:,.0f} rows/s written, "
          f"{200_000 / times['read them back (latest attempts)']:,.0f} rows/s read")

    axes = {"a": 100, "b": 100, "c": args.plan_points // 10_000}
    ranges = f"x: {{range: [0, {axes['a']}]}}, y: {{range: [0, {axes['b']}]}}, seed: {{range: [0, {axes['c']}]}}"
    spec = write_spec(f"""\
        name: huge
        stages:
          s:
            task: demo.quadratic
            params: {{{ranges}}}
    """)
    wall, peak, out = child([*CLI, "plan", str(spec), "--results", results])
    assert str(args.plan_points) in out.replace(",", ""), out
    print(f"plan of {args.plan_points:,} points: {wall:.1f} s wall, peak RSS {peak:.0f} MB (target < 500 MB)")

    from orchestrator import cluster
    from orchestrator.api import run_spec

    cluster.connect(num_cpus=2)
    spin = write_spec(f"""\
        name: spin
        stages:
          s: {{task: demo.spin, max_workers: 1, params: {{i: {{range: [0, 16]}}, iterations: {args.spin}}}}}
    """)
    run_spec(spin, tempfile.mkdtemp(), ["i={range: [100, 102]}"])  # warm both workers
    one, = run_spec(spin, tempfile.mkdtemp())
    two, = run_spec(spin, tempfile.mkdtemp(), ["stages.s.max_workers=2"])
    print(f"CPU-bound sweep (16 runs of demo.spin): 1 worker {one.wall_s:.2f} s, 2 workers {two.wall_s:.2f} s, "
          f"speed-up {one.wall_s / two.wall_s:.2f}x (target >= 1.85x)")
    cluster.shutdown()

if __name__ == "__main__":
    main()
