"""`orchestrator slurm` on a real Slurm: Debian's slurmctld and slurmd on this machine, one node.

scripts/slurm_local.sh installs the packages (as root), writes a private slurm.conf and starts the daemons;
the fixture stops them, and every job, even when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.store import load_results

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = REPO / "scripts" / "slurm_local.sh"
CPUS = str(min(2, os.cpu_count() or 1))  # the test node has this machine's CPUs
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def slurm() -> Iterator[dict[str, str]]:
    """The environment (SLURM_CONF) of a running single-node Slurm; stopped, with its jobs, at the end."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a real Slurm needs root on Linux (apt-get install slurm-wlm, slurmd runs jobs as their user)")
    state = tempfile.mkdtemp(prefix="slurm-", dir="/tmp")
    env = {**os.environ, "SLURM_LOCAL_DIR": state, "SLURM_LOCAL_CTLD_PORT": str(free_port()),
           "SLURM_LOCAL_SLURMD_PORT": str(free_port())}
    installed = subprocess.run(["bash", str(SLURM_LOCAL), "install"], env=env, capture_output=True, text=True,
                               timeout=900)
    if installed.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
        pytest.skip(f"cannot install Debian's Slurm packages: {installed.stderr.strip()[-2000:]}")
    try:
        started = subprocess.run(["bash", str(SLURM_LOCAL), "start"], env=env, capture_output=True, text=True,
                                 timeout=120)
        assert started.returncode == 0, f"slurmctld/slurmd did not start: {started.stdout}{started.stderr}"
        conf = started.stdout.strip().splitlines()[-1].removeprefix("SLURM_CONF=")
        yield {**os.environ, "SLURM_CONF": conf, "PYTHONPATH": str(REPO)}
    finally:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside /tmp: `orchestrator slurm` refuses node-local results roots."""
    parent = Path.home() / ".cache" / "interp-sweeps-tests"
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="slurm-", dir=parent))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def submit(env: dict[str, str], spec: Path, results: Path, *options: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "slurm", str(spec), "--cpus-per-node", CPUS, "--mem", "2G",
         "--time", "10", "--results", str(results), "--submit", *options],
        cwd=spec.parent, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def job_info(env: dict[str, str], job_id: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                           timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def wait_for(env: dict[str, str], job_id: str, timeout_s: float = 300) -> dict[str, str]:
    """The job's final record, once it has ended and its processes are gone (squeue lists it no more)."""
    deadline = time.monotonic() + timeout_s
    while True:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True, timeout=30)
        info = job_info(env, job_id)
        if info.get("JobState") in FINAL_STATES and not queued.stdout.strip():
            return info
        assert time.monotonic() < deadline, f"job {job_id} still {info.get('JobState')} after {timeout_s:g} s"
        time.sleep(1)


def job_output(directory: Path, job_id: str) -> str:
    return "\n".join(path.read_text() for path in directory.glob(f"slurm-*-{job_id}.out"))


def ray_processes_of(job_ids: list[str]) -> list[str]:
    """Command lines of live processes that belong to these jobs' Ray (by their --temp-dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(f"/tmp/ray-{job_id}" in text for job_id in job_ids):
            found.append(text)
    return found


def write_spec(directory: Path, name: str, runs: int) -> Path:
    spec = directory / f"{name}.yaml"
    spec.write_text(f"name: {name}\nstages:\n  s:\n    task: demo.sleep\n"
                    f"    params: {{i: {{range: [0, {runs}]}}, seconds: 1}}\n")
    return spec


def test_a_submitted_sweep_stores_every_row_and_its_chained_job_runs_nothing_again(
        slurm: dict[str, str], shared_dir: Path) -> None:
    # Invariant: the generated script, submitted with sbatch, stores every run of the sweep once; with
    # --array 2 the second job starts after the first ended, finds everything stored, and computes nothing.
    spec = write_spec(shared_dir, "full", 12)
    first, second = submit(slurm, spec, shared_dir / "results", "--array", "2")
    assert job_info(slurm, second)["Dependency"] == f"afterany:{first}(unfulfilled)"
    done = wait_for(slurm, first)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), job_output(shared_dir, first)
    again = wait_for(slurm, second)
    assert (again["JobState"], again["ExitCode"]) == ("COMPLETED", "0:0"), job_output(shared_dir, second)
    assert again["StartTime"] >= done["EndTime"]
    rows = load_results(str(shared_dir / "results"), "full", "s", latest=False)
    assert sorted(rows.i) == list(range(12)) and (rows.status == "ok").all() and rows.run_id.is_unique
    assert "executed 12 runs (0 failed)" in job_output(shared_dir, first)
    assert "12 of 12 runs already stored, 0 to run" in job_output(shared_dir, second)
    for job_id in (first, second):
        assert "Ray stopped; exit status 0" in job_output(shared_dir, job_id)
        assert not Path(f"/tmp/ray-{job_id}").exists()
    assert ray_processes_of([first, second]) == []


def test_scancel_mid_sweep_then_resubmitting_loses_and_repeats_nothing(
        slurm: dict[str, str], shared_dir: Path) -> None:
    # Invariant: a job cancelled mid-sweep keeps the rows of its finished runs; submitting the same command
    # again runs only the missing runs: every run stored exactly once, all ok. The job's Ray token is in no
    # process's argv.
    runs = 30
    spec = write_spec(shared_dir, "resume", runs)
    stage_dir = shared_dir / "results" / "resume" / "s"
    (cancelled,) = submit(slurm, spec, shared_dir / "results")
    deadline = time.monotonic() + 300
    while len(list(stage_dir.glob("part-*.parquet"))) < 2:
        assert time.monotonic() < deadline and job_info(slurm, cancelled)["JobState"] in ("PENDING", "RUNNING"), (
            job_output(shared_dir, cancelled))
        time.sleep(0.5)
    token = driver_token(spec)
    assert len(token) == 64 and not any(token in command for command in all_command_lines())
    script = subprocess.run(["scontrol", "write", "batch_script", cancelled, "-"], env=slurm, capture_output=True,
                            text=True, timeout=30)
    assert "RAY_AUTH_TOKEN" in script.stdout and token not in script.stdout
    subprocess.run(["scancel", cancelled], env=slurm, check=True, timeout=30)
    ended = wait_for(slurm, cancelled)
    assert ended["JobState"] == "CANCELLED"
    assert "Ray stopped; exit status 143" in job_output(shared_dir, cancelled)
    kept = len(load_results(str(stage_dir.parents[1]), "resume", "s", latest=False))
    assert 0 < kept < runs

    (resumed,) = submit(slurm, spec, shared_dir / "results")
    done = wait_for(slurm, resumed)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), job_output(shared_dir, resumed)
    assert f"{kept} of {runs} runs already stored, {runs - kept} to run" in job_output(shared_dir, resumed)
    rows = load_results(str(stage_dir.parents[1]), "resume", "s", latest=False)
    assert sorted(rows.i) == list(range(runs)) and (rows.status == "ok").all() and rows.run_id.is_unique
    assert not list(stage_dir.glob(".tmp-*"))  # no half-written part left behind
    assert ray_processes_of([cancelled, resumed]) == []
    shutil.rmtree(f"/tmp/ray-{cancelled}", ignore_errors=True)  # a cancelled job leaves Ray's logs


def all_command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().decode(errors="replace"))
        except OSError:
            continue
    return lines


def driver_token(spec: Path) -> str:
    """RAY_AUTH_TOKEN from the environment of the job's driver (`orchestrator run SPEC`)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            command = (environ.parent / "cmdline").read_bytes().split(b"\0")
            if b"orchestrator" in command and b"run" in command and str(spec).encode() in command:
                variables = dict(v.split(b"=", 1) for v in environ.read_bytes().split(b"\0") if b"=" in v)
                return variables[b"RAY_AUTH_TOKEN"].decode()
        except OSError:
            continue
    raise AssertionError(f"no running driver for {spec}")
