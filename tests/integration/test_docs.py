"""Docs that run: every spec block in README.md and tasks/README.md plans, and every `orchestrator ...` line
of README.md runs verbatim, in order, in a scratch directory (only cluster results paths are replaced)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.plan import build_plan
from orchestrator.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "tasks" / "README.md")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
INVOKES = re.compile(r"(^|[\s;(])(\S*/)?orchestrator\s")
FILE_HEADER = re.compile(r"^# file: (\S+)\n")
CLUSTER_PATHS = ("/project/results", "/shared/results")  # cluster filesystems in the docs


def blocks(doc: Path) -> list[tuple[str, str]]:
    return [(lang, text) for lang, text in FENCE.findall(doc.read_text())]


def command_lines(text: str) -> list[str]:
    """The shell lines of a bash block that run the orchestrator (continuations joined), but `ray job
    submit`, which needs a cluster (tests/integration/test_cluster.py runs the README's line)."""
    lines = text.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if INVOKES.search(line) and not line.lstrip().startswith("#")
            and "ray job submit" not in line]


def write_file_blocks(doc: Path, directory: Path) -> None:
    for _, text in blocks(doc):
        header = FILE_HEADER.match(text)
        if header:
            target = directory / header.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory that looks like a checkout: sweeps/ and the environment linked in."""
    (tmp_path / "sweeps").symlink_to(REPO / "sweeps")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    yield tmp_path


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_every_spec_block_plans(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_file_blocks(doc, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the README's own task package
    specs = [text for lang, text in blocks(doc) if lang == "yaml"]
    for i, text in enumerate(specs):
        path = tmp_path / f"block-{i}.yaml"
        path.write_text(text)
        plan = build_plan(load_spec(path))
        assert plan.order, text
    if doc.name == "README.md" and doc.parent == REPO:
        assert len(specs) >= 2


def test_readme_has_commands_for_every_cli_command() -> None:
    lines = [line for lang, text in blocks(REPO / "README.md") if lang == "bash" for line in command_lines(text)]
    used = {m.group(1) for line in lines if (m := re.search(r"orchestrator (\w[\w-]*)", line))}
    assert {"plan", "run", "status", "retry", "report", "tasks", "slurm"} <= used


@pytest.mark.slow
def test_readme_commands_run_verbatim_and_quietly(workdir: Path) -> None:
    # Every command line and Python block of the README, in order: exit 0, and no Traceback or Warning on
    # the terminal (Ray's and the libraries' warnings go to the results' log files).
    cluster_results = Path(tempfile.mkdtemp(prefix="docs-results-", dir=Path.home()))  # not /tmp: Slurm refuses it
    env = {**os.environ, "PYTHONPATH": f"{workdir}:{REPO}", "COLUMNS": "160"}
    env.pop("ORCHESTRATOR_RESULTS", None)
    ran = 0
    try:
        for lang, text in blocks(REPO / "README.md"):
            header = FILE_HEADER.match(text)
            if header:
                target = workdir / header.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                continue
            if lang == "bash":
                steps = [["bash", "-c", _local(line, cluster_results)] for line in command_lines(text)]
            elif lang == "python":
                steps = [[sys.executable, "-c", text]]
            else:
                continue
            for step in steps:
                done = subprocess.run(step, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
                shown = f"$ {step[-1]}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
                assert done.returncode == 0, shown
                assert "Traceback" not in done.stdout + done.stderr, shown
                assert "Warning" not in done.stdout + done.stderr, shown
                ran += 1
    finally:
        shutil.rmtree(cluster_results, ignore_errors=True)
    assert ran >= 12
    assert (workdir / "results" / "quickstart" / "specs" / "latest.json").is_file()
    assert (workdir / "sweep.sbatch").read_text().startswith("#!")


def _local(line: str, results: Path) -> str:
    for path in CLUSTER_PATHS:
        line = line.replace(path, str(results))
    return line
