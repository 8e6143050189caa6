"""The command line as users run it: exit codes, messages, driver kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from orchestrator.store import load_results

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_malformed_spec_exits_2_before_ray_and_writes_nothing(write_spec, tmp_path: Path) -> None:
    # Invariant: a bad spec exits with code 2, names file:line and key, starts no Ray, writes nothing.
    spec = write_spec("name: bad\nstages:\n  s:\n    task: demo.quadratic\n    params:\n      x: {grid: []}\n")
    start = time.perf_counter()
    result = cli("run", str(spec), "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{spec}:6: stages.s.params.x.grid: grid is empty" in result.stderr.replace("\n", "")
    assert time.perf_counter() - start < 8  # no Ray start (that alone takes ~3 s more)
    assert "Token authentication" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_plan_status_run_report_and_exit_codes(write_spec, tmp_path: Path) -> None:
    # Invariant: plan needs no Ray and counts done runs; run exits 1 when a run failed, 0 otherwise.
    spec = write_spec("""\
        name: cli
        stages:
          s:
            task: demo.flaky
            params: {i: {range: [0, 6]}, fail_if_divisible_by: 5}
    """)
    results = str(tmp_path / "r")
    planned = cli("plan", str(spec), "--results", results, cwd=tmp_path)
    assert planned.returncode == 0 and "│ s " in planned.stdout and "│    6 │" in planned.stdout
    ran = cli("run", str(spec), "--results", results, "--num-cpus", "2", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    assert "2 failed run(s) in stage s" in ran.stdout and "orchestrator retry" in ran.stdout
    status = cli("status", str(spec), "--results", results, cwd=tmp_path)
    assert "│    6 │    4 │      2 │      0 │" in status.stdout
    report = cli("report", str(spec), "--results", results, cwd=tmp_path)
    assert report.returncode == 0 and "4 ok" in report.stdout and "2 failed" in report.stdout
    fixed = cli("run", str(spec), "--results", results, "fail_if_divisible_by=0", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr  # new param value -> new run ids, all succeed


def test_driver_sigkill_then_resume_runs_each_exactly_once(write_spec, tmp_path: Path) -> None:
    # Invariant: killing the driver mid-sweep loses no stored run; the resumed sweep stores each run once.
    spec = write_spec("""\
        name: killed
        stages:
          s:
            task: demo.sleep
            params: {i: {range: [0, 150]}, seconds: 0.04}
    """)
    results = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(results),
                               "--num-cpus", "2"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    stage_dir = results / "killed" / "s"
    deadline = time.time() + 120
    while time.time() < deadline and not list(stage_dir.glob("part-*.parquet")):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = load_results(str(results), "killed", "s")
    assert 0 < len(before) < 150
    for part in stage_dir.glob("part-*.parquet"):
        pq.read_metadata(part)  # every visible file is complete
    resumed = cli("run", str(spec), "--results", str(results), "--num-cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = load_results(str(results), "killed", "s", latest=False)
    assert len(after) == 150 and after.run_id.is_unique
    assert sorted(after.i) == list(range(150))
    assert f"{len(before)} of 150 runs already stored" in resumed.stderr
