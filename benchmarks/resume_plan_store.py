"""Resume cost, plan at scale, Parquet store throughput, and parallel speed-up.

    .venv/bin/python benchmarks/resume_plan_store.py [--runs 10000] [--plan-points 1000000]
        [--baseline REF] [--only resume|plan|store|speedup ...]

- Resume: re-running a finished N-run sweep with the CLI (a fresh process, as a user would): runs
  executed and wall time, against a bare `python -c pass` start-up as the floor.
- Plan at scale: `orchestrator plan` of a 1,000,000-point spec (100 x 100 x 100 ranges), with nothing
  stored and with rows of the stage stored (ids are then streamed past them), and of a single
  1,000,000-value range: wall, CPU time and peak RSS of that process; with `--baseline REF`, the same
  commands on the code of git ref REF (extracted with `git archive`), and the ratios. A 1-point plan is
  the floor (start-up and imports).
- Store: rows written and read back per second, and Parquet files for the N-run sweep.
- Parallel speed-up: a CPU-bound sweep (demo.spin) with max_workers 2 against max_workers 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import timed, write_spec

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator"]
SECTIONS = ("resume", "plan", "store", "speedup")


@dataclass
class Measured:
    wall: float  # s
    cpu: float  # s, user + system: less sensitive than wall to other jobs on the machine
    peak: float  # MB, peak RSS of the child alone
    out: str

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU, peak RSS {self.peak:.0f} MB"


def child(args: list[str], code: Path = REPO) -> Measured:
    """Run a command on the code in `code`; its wall and CPU seconds, its own peak RSS (wait4, not the
    max over all children) and its output."""
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONPATH": str(code)}, cwd=code)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        output.seek(0)
        text = output.read()
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(text[-2000:])
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text)


def resume(n: int, results: str) -> None:
    spec = write_spec(f"""\
        name: resume
        stages:
          s: {{task: demo.noop, params: {{i: {{range: [0, {n}]}}}}}}
    """)
    first = child([*CLI, "run", str(spec), "--results", results, "--num-cpus", "2"])
    print(f"first run of {n} no-op runs (CLI, incl. Ray start): {first.wall:.1f} s")
    floor = child([sys.executable, "-c", "pass"])
    again = child([*CLI, "run", str(spec), "--results", results])
    executed = again.out.split("executed ")[1].split(" runs")[0]
    print(f"resume of a finished {n}-run sweep: {executed} runs executed, {again.wall:.2f} s wall (target <= 3 s; "
          f"python start-up alone {floor.wall:.2f} s)")
    parts = sorted((Path(results) / "resume" / "s").glob("part-*.parquet"))
    print(f"store: {len(parts)} Parquet files for {n} runs")


def store_throughput() -> None:
    from orchestrator.store import ResultStore

    times: dict[str, float] = {}
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


def baseline_code(ref: str) -> Path:
    """The package and tasks at git ref `ref`, extracted into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    archive = subprocess.run(["git", "archive", ref, "orchestrator", "tasks"], cwd=REPO, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def plan_at_scale(points: int, baseline: str | None) -> None:
    side = round(points ** (1 / 3))
    assert side ** 3 == points, "--plan-points must be a cube (100 x 100 x 100 for 1,000,000)"
    cube = write_spec(f"""\
        name: huge
        stages:
          s:
            task: demo.quadratic
            params: {{x: {{range: [0, {side}]}}, y: {{range: [0, {side}]}}, seed: {{range: [0, {side}]}}}}
    """)
    line = write_spec(f"""\
        name: line
        stages:
          s: {{task: demo.noop, params: {{i: {{range: [0, {points}]}}}}}}
    """)
    one = write_spec("name: one\nstages:\n  s: {task: demo.quadratic, params: {x: 1}}\n")
    empty, stored = tempfile.mkdtemp(prefix="bench-results-"), tempfile.mkdtemp(prefix="bench-results-")
    from orchestrator.store import ResultStore

    some = [f"{i:016x}" for i in range(100)]  # rows of the stage: plan then checks every run id against them
    ResultStore(stored, "huge").write_rows("s", [{"run_id": i, "status": "ok", "attempt": 1} for i in some])
    cases = [
        ("1 point (start-up and imports: the floor)", one, empty, "1"),
        (f"{points:,} points ({side} x {side} x {side}), nothing stored", cube, empty, str(points)),
        (f"{points:,} points ({side} x {side} x {side}), 100 rows of the stage stored", cube, stored, str(points)),
        (f"{points:,} points (one range)", line, empty, str(points)),
    ]
    code = {"this code": REPO} | ({f"baseline {baseline}": baseline_code(baseline)} if baseline else {})
    print(f"plan at scale (load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for label, spec, results, expected in cases:
        measured = {arm: child([*CLI, "plan", str(spec), "--results", results], folder)
                    for arm, folder in code.items()}
        for arm, m in measured.items():
            assert f" {expected} │" in m.out.replace(",", ""), m.out
            print(f"  plan of {label}, {arm}: {m}")
        if baseline:
            now, before = measured["this code"], measured[f"baseline {baseline}"]
            print(f"    -> {before.wall / now.wall:.1f}x faster (wall), {before.cpu / now.cpu:.1f}x less CPU, "
                  f"{before.peak / now.peak:.2f}x less peak RSS (targets at 1,000,000 points: <= 2 s, <= 300 MB)")


def speed_up(spin_iterations: int) -> None:
    from orchestrator import cluster
    from orchestrator.api import run_spec

    cluster.connect(num_cpus=2)
    spin = write_spec(f"""\
        name: spin
        stages:
          s: {{task: demo.spin, max_workers: 1, params: {{i: {{range: [0, 16]}}, iterations: {spin_iterations}}}}}
    """)
    run_spec(spin, tempfile.mkdtemp(), ["i={range: [100, 102]}"])  # warm both workers
    one, = run_spec(spin, tempfile.mkdtemp())
    two, = run_spec(spin, tempfile.mkdtemp(), ["stages.s.max_workers=2"])
    print(f"CPU-bound sweep (16 runs of demo.spin): 1 worker {one.wall_s:.2f} s, 2 workers {two.wall_s:.2f} s, "
          f"speed-up {one.wall_s / two.wall_s:.2f}x (target >= 1.85x)")
    cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--plan-points", type=int, default=1_000_000)
    parser.add_argument("--baseline", help="git ref whose code `plan` is also measured on (e.g. main)")
    parser.add_argument("--spin", type=int, default=15_000_000, help="iterations per CPU-bound run")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    if "resume" in sections:
        resume(args.runs, tempfile.mkdtemp(prefix="bench-results-"))
    if "store" in sections:
        store_throughput()
    if "plan" in sections:
        plan_at_scale(args.plan_points, args.baseline)
    if "speedup" in sections:
        speed_up(args.spin)


if __name__ == "__main__":
    main()
