"""Streaming stages: a downstream run starts once the upstream runs it reads are stored, not at stage end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.api import run_spec
from orchestrator.runner import RunOptions
from orchestrator.store import load_results
from tests.helpers import REPO, driver_with_stored_rows

PIPELINE = """\
    name: stream
    stages:
      up: {task: demo.produce, max_workers: 1, params: {i: {range: [0, 8]}, wait_s: 0.4}}
      down: {task: demo.sleep, needs: [up], params: {i: {range: [0, 8]}, seconds: 0.05}}
      gather: {task: demo.sleep, needs: [up], params: {seconds: 0}}
"""


def first_part_stored_at(stage_dir: Path) -> float:
    """When the stage's first part was written (part names begin with the write time in ns)."""
    return min(int(part.name.split("-")[1]) for part in stage_dir.glob("part-*.parquet")) / 1e9


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("barrier", [False, True])
def test_downstream_rows_land_before_the_upstream_stage_ends(write_spec, tmp_path: Path, barrier: bool) -> None:
    # Invariant: streaming, the first downstream row is stored before the last upstream run ends, and each
    # downstream run read exactly its own upstream run; a run that reads every upstream run starts after
    # all of them; with --stage-barrier no downstream row is stored before the upstream stage ends.
    spec, results = write_spec(PIPELINE), tmp_path / "r"
    outcomes = run_spec(spec, results, options=RunOptions(flush_s=0.2, stage_barrier=barrier))
    assert [(o.name, o.ok, o.failed) for o in outcomes] == [("up", 8, 0), ("down", 8, 0), ("gather", 1, 0)]
    up, down = load_results(str(results), "stream", "up"), load_results(str(results), "stream", "down")
    (gather,) = load_results(str(results), "stream", "gather").itertuples()
    up_ids = dict(zip(up.i, up.run_id, strict=True))
    assert all(list(ids) == [up_ids[i]] for i, ids in zip(down.i, down.upstream_run_ids, strict=True))
    assert sorted(gather.upstream_run_ids) == sorted(up.run_id) and gather.t_start >= up.t_end.max()
    lead = up.t_end.max() - first_part_stored_at(results / "stream" / "down")
    print(f"\n{'barrier' if barrier else 'streaming'}: first downstream part {lead:+.2f} s before the last "
          "upstream run ended")
    assert (lead < 0) if barrier else (lead > 0)


@pytest.mark.usefixtures("ray_session")
def test_a_failed_upstream_run_fails_only_the_runs_that_read_it(write_spec, tmp_path: Path) -> None:
    # Invariant: while stages stream, a failed upstream run makes exactly the downstream runs that read it
    # (directly or through a missing run) missing_upstream; every other downstream run runs and is ok.
    spec, results = write_spec("""\
        name: fails
        stages:
          up: {task: demo.produce, params: {i: {range: [0, 6]}, wait_s: 0.1, fail_if_divisible_by: 3}}
          mid: {task: demo.produce, needs: [up], params: {i: {range: [0, 6]}}}
          down: {task: demo.sleep, needs: [mid], params: {i: {range: [0, 6]}, seconds: 0}}
          gather: {task: demo.sleep, needs: [mid], params: {seconds: 0}}
    """), tmp_path / "r"
    outcomes = run_spec(spec, results)
    assert [(o.name, o.ok, o.failed) for o in outcomes] == [("up", 4, 2), ("mid", 4, 2), ("down", 4, 2),
                                                            ("gather", 0, 1)]
    failed_up = set(load_results(str(results), "fails", "up").query("status != 'ok'").run_id)
    for stage in ("mid", "down"):
        rows = load_results(str(results), "fails", stage)
        assert dict(zip(rows.i, rows.status, strict=True)) == {
            i: "missing_upstream" if i % 3 == 0 else "ok" for i in range(6)}
    mid = load_results(str(results), "fails", "mid").set_index("i")
    assert all(set(mid.loc[i, "upstream_run_ids"]) <= failed_up for i in (0, 3))
    (gather,) = load_results(str(results), "fails", "gather").itertuples()
    assert gather.status == "missing_upstream" and "stage 'mid'" in gather.error


def test_interrupt_while_streaming_then_resume(write_spec, tmp_path: Path) -> None:
    # Invariant: Ctrl-C while the stages stream stops cleanly (exit 130) with no downstream row stored without
    # its upstream row; the same command then runs only what is missing, each run stored exactly once.
    spec, results = write_spec("""\
        name: resume
        stages:
          up: {task: demo.produce, max_workers: 1, params: {i: {range: [0, 16]}, wait_s: 0.4}}
          down: {task: demo.sleep, needs: [up], params: {i: {range: [0, 16]}, seconds: 0.05}}
    """), tmp_path / "r"
    driver = driver_with_stored_rows(spec, results, results / "resume" / "down", tmp_path)
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    up, down = load_results(str(results), "resume", "up"), load_results(str(results), "resume", "down")
    assert 0 < len(down) < 16  # stopped mid-way (on a loaded machine the upstream stage may have ended by then)
    assert {i for ids in down.upstream_run_ids for i in ids} <= set(up.query("status == 'ok'").run_id)
    resumed = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(results),
                              "--num-cpus", "2"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for stage in ("up", "down"):
        rows = load_results(str(results), "resume", stage, latest=False)
        assert len(rows) == 16 and rows.run_id.is_unique and set(rows.status) == {"ok"}
