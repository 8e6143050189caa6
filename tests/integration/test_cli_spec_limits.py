"""`plan` on hostile specs: a clean message and exit code 2 (never a traceback or a hang), no Ray."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import MAX_YAML_NODES, load_spec

REPO = Path(__file__).resolve().parents[2]

ALIAS_BOMB = "name: s\nstages: {a: {task: demo.noop}}\na0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))

# A task with 61 integer parameters, for a reference chain p0 -> p1 -> ... -> p60 that validates.
CHAIN_TASK = """\
from pydantic import create_model

from orchestrator.registry import TaskParams, task

ChainParams = create_model("ChainParams", __base__=TaskParams, **{f"p{i}": (int, 0) for i in range(61)})


@task("test.chain", params=ChainParams)
def chain(params, ctx):
    return {"value": params.p0}
"""


def plan(spec: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(cwd)]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(spec), "--results", str(cwd / "r")],
                          cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_alias_bomb_is_refused_in_under_a_second(tmp_path: Path) -> None:
    # Invariant: nine levels of nine-fold aliases are refused while composing (under the 1 s bound, which
    # expansion could never meet), with exit code 2 and a message naming the file, line and the node limit.
    spec = tmp_path / "bomb.yaml"
    spec.write_text(ALIAS_BOMB)
    started = time.perf_counter()
    with pytest.raises(SpecError):
        load_spec(spec)
    assert time.perf_counter() - started < 1.0
    result = plan(spec, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{spec}:9: invalid YAML: more than {MAX_YAML_NODES:,} YAML nodes" in result.stderr
    assert "Traceback" not in result.stderr


def test_reference_chain_of_60_plans(tmp_path: Path) -> None:
    # Invariant: a chain of 60 references resolves (it used to end in a RecursionError traceback): one run.
    (tmp_path / "chaintask.py").write_text(CHAIN_TASK)
    spec = tmp_path / "chain.yaml"
    chain = "".join(f"      p{i}: '${{p{i + 1}}}'\n" for i in range(60))
    spec.write_text(f"name: chain\nstages:\n  s:\n    task: 'chaintask:chain'\n    params:\n{chain}      p60: 7\n")
    result = plan(spec, tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"│ s +│ test\.chain +│ cpu=1 +│ +1 │", result.stdout), result.stdout


def test_reference_cycle_of_60_exits_2(tmp_path: Path) -> None:
    # Invariant: the same chain closed into a cycle is named in one `file:line: key: reason` line, exit code 2.
    spec = tmp_path / "cycle.yaml"
    cycle = "".join(f"      p{i}: '${{p{(i + 1) % 60}}}'\n" for i in range(60))
    spec.write_text(f"name: cycle\nstages:\n  s:\n    task: demo.noop\n    params:\n{cycle}")
    result = plan(spec, tmp_path)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert f"{spec}:6: stages.s.params.p0: reference cycle: p0 -> p1 -> " in message and "p59 -> p0" in message
    assert "Traceback" not in result.stderr
