"""The command line as users run it: exit codes, messages, driver kill and resume."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.store import load_results
from tests.helpers import driver_with_stored_rows, executing_workers

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
    assert report.returncode == 0 and "4 ok" in report.stdout and "2 task_error" in report.stdout
    fixed = cli("run", str(spec), "--results", results, "fail_if_divisible_by=0", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr  # new param value -> new run ids, all succeed


def _kill_when(condition, spec: Path, results: Path, cwd: Path, timeout: float = 120) -> bool:
    """Start a driver, SIGKILL its whole process group once `condition()` holds; True if it was killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(results),
                               "--num-cpus", "2"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None and not condition():
        time.sleep(0.002)
    killed = driver.poll() is None
    if killed:
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return killed


def _assert_readable(stage_dir: Path) -> None:
    for part in stage_dir.glob("part-*.parquet"):
        pq.read_metadata(part)  # every visible file is complete


def test_driver_sigkill_at_three_points_then_resume(write_spec, tmp_path: Path) -> None:
    # Invariant: SIGKILL of the driver before the first write, while a part is being written, and near the
    # end loses no stored run, never leaves an unreadable visible file, and the resumed sweep stores each
    # run exactly once.
    spec = write_spec("""\
        name: killed
        stages:
          s:
            task: demo.sleep
            params: {i: {range: [0, 300]}, seconds: 0.05}
    """)
    results = tmp_path / "r"
    stage_dir = results / "killed" / "s"
    stored = lambda: len(load_results(str(results), "killed", "s")) if stage_dir.exists() else 0  # noqa: E731
    # 1. before the first write: once a worker is executing runs, but no part exists yet
    assert _kill_when(lambda: executing_workers() and not list(stage_dir.glob("part-*")), spec, results, tmp_path)
    _assert_readable(stage_dir)
    first = stored()
    # 2. mid-write: while a temporary part file exists (at the latest, right after the next part lands)
    parts_before = len(list(stage_dir.glob("part-*")))
    assert _kill_when(lambda: any(stage_dir.glob(".tmp-*")) or len(list(stage_dir.glob("part-*"))) > parts_before,
                      spec, results, tmp_path)
    _assert_readable(stage_dir)
    second = stored()
    # 3. near the end: once at least 200 of 300 runs are stored
    _kill_when(lambda: stage_dir.exists() and sum(pq.read_metadata(p).num_rows for p in stage_dir.glob("part-*"))
               >= 200, spec, results, tmp_path)
    _assert_readable(stage_dir)
    third = stored()
    resumed = cli("run", str(spec), "--results", str(results), "--num-cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = load_results(str(results), "killed", "s", latest=False)
    assert len(after) == 300 and after.run_id.is_unique
    assert sorted(after.i) == list(range(300))
    assert first <= second <= third < 300
    assert not list(stage_dir.glob(".tmp-*"))  # half-written parts of killed drivers are cleaned up
    print(f"\ndriver kills: 3 kills, stored after each: {first}, {second}, {third}; final 300 runs, 0 lost, "
          "0 duplicated")


def test_ctrl_c_during_tuning_stops_the_sweep_and_resumes(write_spec, tmp_path: Path) -> None:
    # Invariant: SIGINT during a tune stage stops the whole sweep (exit 130, the resume message), not just
    # one group's search; re-running asks only for the missing trials and re-runs no stored one.
    spec = write_spec("""\
        name: tunestop
        stages:
          val:
            task: demo.sleep
            params: {i: {grid: [1, 2]}}
            tune: {metric: t_end, mode: min, group_by: [i], num_samples: 12, space: {seconds: {uniform: [0.2, 0.3]}}}
    """)
    results = tmp_path / "r"
    driver = driver_with_stored_rows(spec, results, results / "tunestop" / "val", tmp_path)
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "finished runs are stored; run the same command to resume" in stderr
    stored = load_results(str(results), "tunestop", "val", latest=False)
    assert 0 < len(stored) < 24
    resumed = cli("run", str(spec), "--results", str(results), "--num-cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = load_results(str(results), "tunestop", "val", latest=False)
    assert len(after) == 24 and after.run_id.is_unique and set(stored.run_id) <= set(after.run_id)


@pytest.mark.parametrize("resources", ["{num_cpus: 64}", "{num_gpus: 1}", "{memory: 1TiB}",
                                       "{accelerator_type: H100}"])
def test_plan_refuses_infeasible_resources_as_run_does(write_spec, tmp_path: Path, resources: str) -> None:
    # Invariant: `plan` checks requests against what a local Ray would have, starts none, and refuses with
    # exactly the message `run` gives (exit 2); --num-cpus / --num-gpus change what it checks against.
    spec = write_spec(f"name: big\nstages:\n  s: {{task: demo.quadratic, resources: {resources}, params: {{x: 1}}}}\n")
    planned = cli("plan", str(spec), "--results", str(tmp_path / "r"), cwd=tmp_path)
    ran = cli("run", str(spec), "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert planned.returncode == ran.returncode == 2, planned.stderr + ran.stderr
    def refusal(done: subprocess.CompletedProcess[str]) -> str:  # free memory may move between the two calls
        text = done.stderr.replace("\n", "")
        return text[text.index("error:"):text.index("(largest node")]

    assert "which no node can provide" in refusal(planned) and refusal(planned) == refusal(ran)
    assert "Token authentication" not in planned.stderr  # no Ray was started by plan
    if resources == "{num_cpus: 64}":
        widened = cli("plan", str(spec), "--results", str(tmp_path / "r"), "--num-cpus", "64", cwd=tmp_path)
        assert widened.returncode == 0, widened.stderr


def test_plan_of_a_cpu_sweep_imports_neither_ray_nor_pandas(write_spec, tmp_path: Path) -> None:
    # Invariant: `plan` of runs that need one CPU detects nothing and reads no table, so its start-up
    # stays the CLI's own (Ray's import alone is half a second, pandas' another).
    spec = write_spec("name: light\nstages:\n  s: {task: demo.quadratic, params: {x: {range: [0, 3]}}}\n")
    code = ("import sys; from orchestrator.cli import main; sys.argv = ['orchestrator', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print(sorted({'ray', 'pandas'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, "plan", str(spec), "--results", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "│      3 │" in done.stdout, done.stdout  # the plan was printed: 3 runs to run
    assert done.stdout.strip().endswith("[]"), done.stdout


def test_plan_of_a_trillion_point_range_refuses_at_once(write_spec, tmp_path: Path) -> None:
    # Invariant: a stage's run count is arithmetic: plan refuses 10^12 runs in a moment (exit 2, naming the
    # limit and how to raise it), without expanding; `max_runs` raises the limit.
    spec = write_spec("name: huge\nstages:\n  s: {task: demo.noop, params: {i: {range: [0, 1000000000000]}}}\n")
    start = time.perf_counter()
    planned = cli("plan", str(spec), "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert planned.returncode == 2 and "expands to 1,000,000,000,000 runs" in planned.stderr.replace("\n", "")
    assert "max_runs" in planned.stderr and "Traceback" not in planned.stderr
    assert time.perf_counter() - start < 20  # process start and imports; expansion would take hours
    small = cli("plan", str(spec), "--results", str(tmp_path / "r"), "i={range: [0, 5]}", "max_runs=5", cwd=tmp_path)
    assert small.returncode == 0, small.stderr


def test_sigterm_stops_cleanly_and_resumes(write_spec, tmp_path: Path) -> None:
    # Invariant: SIGTERM to the driver (kill, scancel, a time limit) stops like Ctrl-C: exit 143, the
    # finished runs stored (none half-written), and the same command resumes with each run stored once.
    spec = write_spec("""\
        name: termed
        stages:
          s: {task: demo.sleep, params: {i: {range: [0, 60]}, seconds: 0.1}}
    """)
    results = tmp_path / "r"
    stage_dir = results / "termed" / "s"
    driver = driver_with_stored_rows(spec, results, stage_dir, tmp_path)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr
    assert "terminated:" in stderr and "Traceback" not in stderr
    _assert_readable(stage_dir)
    stored = len(load_results(str(results), "termed", "s"))
    assert 0 < stored < 60
    resumed = cli("run", str(spec), "--results", str(results), "--num-cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = load_results(str(results), "termed", "s", latest=False)
    assert len(after) == 60 and after.run_id.is_unique


def test_overrides_are_remembered_and_the_retry_hint_repeats_every_option(write_spec, tmp_path: Path) -> None:
    # Invariant: `run` saves the resolved spec; status / report / retry without overrides use the latest run's
    # overrides and say so; a changed spec file is not silently combined with them; the hint is runnable.
    spec = write_spec("""\
        name: remember
        stages:
          s:
            task: demo.flaky
            params: {i: {range: [0, 3]}, fail_if_divisible_by: 0}
    """)
    results = str(tmp_path / "r")
    ran = cli("run", str(spec), "i=[10,11,12,13]", "fail_if_divisible_by=2", "--results", results,
              "--executor", "inline", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    hint = next(line for line in ran.stdout.splitlines() if "re-run them with:" in line).split("with: ")[1]
    assert hint == (f"orchestrator retry {spec} 'i=[10,11,12,13]' fail_if_divisible_by=2 --results {results} "
                    "--executor inline")
    saved = json.loads((tmp_path / "r" / "remember" / "specs" / "latest.json").read_text())
    assert saved["overrides"] == ["i=[10,11,12,13]", "fail_if_divisible_by=2"]
    assert saved["resolved"]["stages"]["s"]["params"]["i"] == [10, 11, 12, 13]
    assert (tmp_path / "r" / "remember" / "specs" / f"{saved['fingerprint']}.json").is_file()

    status = cli("status", str(spec), "--results", results, cwd=tmp_path)
    assert "using the overrides of the latest run (i=[10,11,12,13] fail_if_divisible_by=2)" in status.stderr
    assert "│    4 │    2 │      2 │      0 │" in status.stdout and "no longer in the spec" not in status.stdout
    report = cli("report", str(spec), "--results", results, cwd=tmp_path)
    assert "using the overrides" in report.stderr and "2 ok" in report.stdout
    retried = cli(*shlex.split(hint)[1:], cwd=tmp_path)
    assert retried.returncode == 1 and "executed 2 runs (2 failed)" in retried.stderr  # deterministic failures

    spec.write_text(spec.read_text().replace("range: [0, 3]", "range: [0, 2]"))
    changed = cli("status", str(spec), "--results", results, cwd=tmp_path)
    assert "changed since the latest run" in changed.stderr and "│    2 │    0 │      0 │      2 │" in changed.stdout
