"""Streaming stages against a stage barrier: a two-stage pipeline with skewed upstream run times.

    .venv/bin/python benchmarks/streaming.py [--runs 40] [--max-up-s 2.0] [--down-s 1.0] [--shared]

`--runs` upstream runs (`demo.produce`) of 0.1 to `--max-up-s` seconds, evenly spread and shuffled
(seed 0), each read by one downstream run (`demo.sleep`) of `--down-s` seconds. Both arms run the same
spec on the same local Ray in this process: streaming (the default) and `--stage-barrier`
(`RunOptions.stage_barrier`). The stages have 2 workers each: the upstream stage on 2 (logical) GPUs, the
downstream stage on 2 CPUs, as when a GPU stage feeds a CPU one. `--shared` adds the case where both
stages share the same 2 CPU workers: there a barrier only idles a worker during the upstream tail, so
streaming mostly brings the first downstream rows forward.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from _common import write_spec

from orchestrator import cluster
from orchestrator.api import run_spec
from orchestrator.runner import RunOptions
from orchestrator.store import load_results

SPEC = """\
    name: streaming
    stages:
      up:
        task: demo.produce
        resources: {up_resources}
        params: {{pair: {{zip: {{i: {ids}, wait_s: {waits}}}}}}}
      down:
        task: demo.sleep
        needs: [up]
        resources: {{num_cpus: 1}}
        params: {{i: {{range: [0, {runs}]}}, seconds: {down_s}}}
"""


def first_part_at(stage_dir: Path) -> float:
    """When the stage's first part was stored (part names begin with the write time in ns)."""
    return min(int(part.name.split("-")[1]) for part in stage_dir.glob("part-*.parquet")) / 1e9


def measure(spec: Path, barrier: bool) -> tuple[float, float, float]:
    """(wall, first downstream row stored, last upstream run ended), the last two from the start."""
    results = tempfile.mkdtemp(prefix="bench-streaming-")
    start = time.time()
    outcomes = run_spec(spec, results, options=RunOptions(stage_barrier=barrier))
    wall = time.time() - start
    assert all(o.failed == 0 for o in outcomes), [(o.name, o.failures[:1]) for o in outcomes]
    last_up = float(load_results(results, "streaming", "up").t_end.max()) - start
    first_down = first_part_at(Path(results) / "streaming" / "down") - start
    arm = "stage barrier" if barrier else "streaming"
    print(f"  {arm:>13}: {wall:6.2f} s; first downstream row stored at {first_down:5.2f} s, last upstream run "
          f"ended at {last_up:5.2f} s", flush=True)
    return wall, first_down, last_up


def compare(label: str, spec: Path) -> None:
    print(label)
    barrier, _, _ = measure(spec, barrier=True)
    streaming, first_down, last_up = measure(spec, barrier=False)
    print(f"  barrier / streaming: {barrier / streaming:.2f}x (target >= 1.3x); first downstream row "
          f"{last_up - first_down:.2f} s before the last upstream run ended (target > 0)\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--max-up-s", type=float, default=2.0)
    parser.add_argument("--down-s", type=float, default=1.0)
    parser.add_argument("--shared", action="store_true", help="also run both stages on the same 2 CPU workers")
    args = parser.parse_args()
    n = args.runs
    waits = [round(0.1 + (args.max_up_s - 0.1) * k / (n - 1), 3) for k in range(n)]
    random.Random(0).shuffle(waits)
    fill = {"ids": list(range(n)), "waits": waits, "runs": n, "down_s": args.down_s}
    cluster.connect(num_cpus=2, num_gpus=2)
    try:
        warm = {**fill, "ids": list(range(4)), "waits": [0.1] * 4, "runs": 4, "down_s": 0.1}
        run_spec(write_spec(SPEC.format(up_resources="{num_cpus: 0, num_gpus: 1}", **warm)),
                 tempfile.mkdtemp(prefix="bench-warm-"))  # start the 4 worker processes before either arm
        print(f"{n} upstream runs of 0.1-{args.max_up_s:g} s (sum {sum(waits):.1f} s), each read by one downstream "
              f"run of {args.down_s:g} s\n")
        compare("upstream on 2 GPU workers, downstream on 2 CPU workers",
                write_spec(SPEC.format(up_resources="{num_cpus: 0, num_gpus: 1}", **fill)))
        if args.shared:
            compare("both stages on the same 2 CPU workers",
                    write_spec(SPEC.format(up_resources="{num_cpus: 1}", **fill)))
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
