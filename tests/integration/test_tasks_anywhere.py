"""A researcher's own task runs from their own package: `module:function` on PYTHONPATH and an installed
package's entry point, on a local Ray, on a `ray start` cluster and under `ray job submit`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.store import load_results
from tests.helpers import ray_head, submit_job

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENTRY_DISTRIBUTION = "interp-sweeps-labentry"

LAB_MODULE = '''\
from orchestrator.registry import TaskParams, task


class ProbeParams(TaskParams):
    x: int = 0


@task("lab.probe", params=ProbeParams, smoke={"x": 1})
def probe(params: ProbeParams, ctx) -> dict:
    """Doubles x (a user's task; its registered name differs from its module path)."""
    return {"doubled": params.x * 2}
'''

ENTRY_MODULE = '''\
from orchestrator.registry import TaskParams, task


class SquareParams(TaskParams):
    x: int = 0


@task("lab.square", params=SquareParams, smoke={"x": 2})
def square(params: SquareParams, ctx) -> dict:
    """Squares x (registered through the package's entry point)."""
    return {"squared": params.x**2}
'''

SPEC = """\
name: anywhere
stages:
  probe: {task: "labtasks.probe:probe", params: {x: {grid: [1, 2, 3]}}}
  square: {task: lab.square, params: {x: {grid: [2, 3]}}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module outside the repo (returned: its PYTHONPATH entry) and a package installed into this venv
    that declares a task entry point; the package is uninstalled afterwards."""
    root = tmp_path_factory.mktemp("lab")
    (root / "path" / "labtasks").mkdir(parents=True)
    (root / "path" / "labtasks" / "__init__.py").write_text("")
    (root / "path" / "labtasks" / "probe.py").write_text(LAB_MODULE)
    package = root / "package"
    (package / "labentry").mkdir(parents=True)
    (package / "labentry" / "__init__.py").write_text("")
    (package / "labentry" / "tasks.py").write_text(ENTRY_MODULE)
    (package / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{ENTRY_DISTRIBUTION}"
        version = "0.1.0"

        [project.entry-points."interp_sweeps.tasks"]
        "lab.square" = "labentry.tasks:square"

        [tool.setuptools]
        packages = ["labentry"]
    """))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(package)], check=True,
                   capture_output=True, timeout=300)
    try:
        yield root / "path"
    finally:
        subprocess.run([*pip, "uninstall", "--yes", ENTRY_DISTRIBUTION], capture_output=True, timeout=300)


def lab_env(lab: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{lab}{os.pathsep}{REPO}", **extra}


def check_rows(results: Path) -> None:
    probe = load_results(str(results), "anywhere", "probe")
    square = load_results(str(results), "anywhere", "square")
    assert (probe.status == "ok").all() and sorted(probe.doubled) == [2, 4, 6], probe.error.tolist()
    assert set(probe.task) == {"lab.probe"}
    assert (square.status == "ok").all() and sorted(square.squared) == [4, 9], square.error.tolist()


def test_tasks_lists_the_entry_point(lab: Path) -> None:
    # Invariant: `orchestrator tasks` lists a task an installed package declares, and who declared it.
    done = subprocess.run([str(BIN / "orchestrator"), "tasks"], capture_output=True, text=True, timeout=120,
                          env={**lab_env(lab), "COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "lab.square" in line)
    assert "labentry.tasks:square" in line and ENTRY_DISTRIBUTION in line


@pytest.mark.parametrize("executor", ["ray", "inline"])
def test_own_tasks_run_locally(lab: Path, tmp_path: Path, executor: str) -> None:
    # Invariant: workers resolve the task the driver planned (its import target), not a built-in name.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    command = [str(BIN / "orchestrator"), "run", str(spec), "--results", str(tmp_path / "r"), "--executor", executor]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=lab_env(lab))
    assert done.returncode == 0, done.stdout + done.stderr
    check_rows(tmp_path / "r")


@pytest.mark.slow
def test_own_tasks_on_a_ray_start_cluster_and_under_job_submit(lab: Path, tmp_path: Path) -> None:
    # Invariant: on a separately started cluster, whose workers do not see the driver's PYTHONPATH, the
    # user's module is shipped with the job; the same holds for a driver run by `ray job submit`.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "RAY_AUTH_MODE": "token"}
    with ray_head(env) as (port, dashboard):
        attach = [str(BIN / "orchestrator"), "run", str(spec), "--results", str(tmp_path / "attached"),
                  "--address", f"127.0.0.1:{port}"]
        deadline = time.time() + 120
        while True:  # the head needs a few seconds before it accepts drivers
            done = subprocess.run(attach, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                                  env={**env, "PYTHONPATH": str(lab)})
            if done.returncode == 0 or time.time() > deadline or "cannot connect" not in done.stderr:
                break
            time.sleep(2)
        assert done.returncode == 0, done.stdout + done.stderr
        check_rows(tmp_path / "attached")
        job = submit_job(dashboard, env, ["env", f"PYTHONPATH={lab}", sys.executable, "-m", "orchestrator", "run",
                                          str(spec), "--results", str(tmp_path / "job")])
        assert job.returncode == 0, job.stdout + job.stderr
    check_rows(tmp_path / "job")
