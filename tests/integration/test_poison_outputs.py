"""Outputs Parquet cannot hold never crash the driver: they become `bad_output` rows, and stages stay readable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.store import ResultStore, load_results

REPO = Path(__file__).resolve().parents[2]
POISON = '''\
from orchestrator.registry import TaskParams, task


class PoisonParams(TaskParams):
    case: str
    i: int = 0


@task("lab.poison", params=PoisonParams)
def poison(params, ctx):
    """Returns, per case, a value a result store must not choke on."""
    if params.case == "huge":
        return {"metric": 2**63 + params.i}
    if params.case == "text":
        return {"metric": f"not a number {params.i}"}
    if params.case == "keys":
        return {1: 1.0, "1": 2.0}
    if params.case == "float":
        return {"metric": 0.5 + params.i}
    return {"metric": params.i}
'''


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "labpoison.py").write_text(POISON)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}


def run(spec: Path, results: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(results), *extra],
                          capture_output=True, text=True, timeout=300, env=env, cwd=spec.parent)


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_unstorable_values_become_bad_output_rows(tmp_path: Path, lab: dict[str, str], executor: str) -> None:
    # Invariant: an int beyond int64, a type contradicting the stored column, and colliding keys each fail
    # only their own run (bad_output, naming the column and types); the other runs are stored, resume runs
    # nothing, and the stage reads back.
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: poison
        stages:
          s: {task: "labpoison:poison", params: {case: {grid: [int, huge, float, text, keys]}, i: {grid: [1, 2]}}}
    """))
    results = tmp_path / "r"
    first = run(spec, results, lab, "--executor", executor)
    assert first.returncode == 1, first.stderr  # some runs failed; no crash
    assert "Traceback" not in first.stderr
    df = load_results(str(results), "poison", "s").set_index(["case", "i"])
    assert len(df) == 10
    for case in ("int", "float"):
        assert (df.loc[case, "status"] == "ok").all(), df.loc[case, "error"].tolist()
    assert df.loc[("float", 1), "metric"] == 1.5 and df.loc[("int", 2), "metric"] == 2.0  # int widened to float
    for case, fragment in (("huge", "does not fit a 64-bit integer"), ("text", "holds a string"),
                           ("keys", "name the same column")):
        bad = df.loc[case]
        assert (bad.status == "bad_output").all() and (bad.error_type == "bad_output").all(), bad.error.tolist()
        assert bad.error.str.contains(fragment).all(), bad.error.tolist()
    again = run(spec, results, lab, "--executor", executor)
    assert again.returncode == 1 and "executed 0 runs" in again.stderr, again.stderr
    report = subprocess.run([sys.executable, "-m", "orchestrator", "report", str(spec), "--results", str(results)],
                            capture_output=True, text=True, timeout=300, env=lab)
    assert report.returncode == 0, report.stderr


def test_stage_with_mixed_parts_is_still_readable(tmp_path: Path) -> None:
    # Invariant: a stage whose parts disagree on a column's type (written before rows were checked) reads
    # back, that column as text, with a warning, instead of an ArrowTypeError.
    store = ResultStore(str(tmp_path), "mixed")
    base = {"run_id": ["a"], "status": ["ok"], "attempt": [1]}
    store.write_table("s", pa.table({**base, "metric": pa.array([1])}))
    store.write_table("s", pa.table({**base, "run_id": ["b"], "metric": pa.array(["x"])}))
    with pytest.warns(UserWarning, match="metric"):
        df = load_results(str(tmp_path), "mixed", "s")
    assert sorted(df.metric) == ["1", "x"]
    assert all(pq.read_metadata(p).num_rows == 1 for p in (tmp_path / "mixed" / "s").glob("part-*"))


def test_another_spec_writing_into_a_sweep_name_is_refused(tmp_path: Path, lab: dict[str, str]) -> None:
    # Invariant: a second spec whose stage runs another task in an existing sweep stage exits 2 unless --force.
    first = tmp_path / "first.yaml"
    first.write_text("name: shared\nstages:\n  s: {task: demo.quadratic, params: {x: {grid: [1, 2]}}}\n")
    second = tmp_path / "second.yaml"
    second.write_text("name: shared\nstages:\n  s: {task: demo.noop, params: {i: {grid: [1, 2]}}}\n")
    results = tmp_path / "r"
    assert run(first, results, lab, "--executor", "inline").returncode == 0
    refused = run(second, results, lab, "--executor", "inline")
    assert refused.returncode == 2 and "holds results of task demo.quadratic" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    forced = run(second, results, lab, "--executor", "inline", "--force")
    assert forced.returncode == 0, forced.stderr
