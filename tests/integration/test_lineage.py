"""Runs are addressed by their lineage: change anything upstream and exactly the affected runs recompute."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.runner import NullProgress
from orchestrator.status import summarize
from orchestrator.store import load_results

REPO = Path(__file__).resolve().parents[2]
DAG = """\
    name: lineage
    stages:
      vectors:
        task: demo.vector
        params: {length: {grid: [3, 5]}, scale: 1.0}
      total:
        task: demo.vector_sum
        needs: [vectors]
        params: {length: {grid: [3, 5]}, power: 2}
"""


def executed(outcomes) -> dict[str, int]:
    return {o.name: o.executed for o in outcomes}


@pytest.mark.parametrize("executor", ["ray", "inline"])
def test_upstream_only_change_recomputes_exactly_its_downstream(write_spec, tmp_path: Path, executor: str,
                                                                request) -> None:
    # Invariant: changing an upstream-only parameter of one upstream run re-runs that run and the one
    # downstream run reading it; everything else is served from the store; rows record their lineage.
    if executor == "ray":
        request.getfixturevalue("ray_session")
    spec, results = write_spec(DAG), tmp_path / "r"
    assert executed(run_spec(spec, results, executor=executor)) == {"vectors": 2, "total": 2}
    assert executed(run_spec(spec, results, executor=executor)) == {"vectors": 0, "total": 0}
    change = ["stages.vectors.params.scale={when: {length: 5}, then: 3.0, else: 1.0}"]
    assert executed(run_spec(spec, results, change, executor=executor)) == {"vectors": 1, "total": 1}
    vectors = load_results(str(results), "lineage", "vectors")
    totals = load_results(str(results), "lineage", "total")
    assert len(vectors) == 3 and len(totals) == 3
    assert all(list(ids) == [] for ids in vectors.upstream_run_ids)
    for _, row in totals.iterrows():
        (upstream_id,) = row.upstream_run_ids
        assert row.upstream_run == upstream_id  # the artifact the task read is the one in its lineage
        norm = vectors.set_index("run_id").loc[upstream_id, "norm"]
        assert row.total == pytest.approx(norm**2)
    scaled = vectors[(vectors.length == 5) & (vectors.scale == 3.0)].run_id.item()
    assert sum(list(ids) == [scaled] for ids in totals.upstream_run_ids) == 1
    # the old downstream rows are kept, and no longer count as runs of the plan
    summary = {s.name: s for s in summarize(*open_sweep(spec, results, change))}
    assert (summary["total"].total, summary["total"].ok, summary["total"].stored_not_in_spec) == (2, 2, 1)


LAB_TASK = '''\
from orchestrator.registry import TaskParams, task


class MakeParams(TaskParams):
    length: int = 3


@task("lab.make_vector", params=MakeParams, version={version})
def make(params, ctx):
    """Writes vector.npy (read by demo.vector_sum), version {version}."""
    import numpy as np

    np.save(ctx.artifact_dir / "vector.npy", np.arange(params.length, dtype=float) * {version})
    return {{"made": params.length}}
'''


def test_version_bump_of_an_upstream_task_cascades(tmp_path: Path) -> None:
    # Invariant: bumping an upstream task's version gives its runs new ids, and so every downstream run
    # that reads them; a user task in a module outside the repo, named unlike its module, runs inline.
    package = tmp_path / "lab"
    package.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: bump
        stages:
          make: {task: "labvectors:make", params: {length: {grid: [2, 4]}}}
          total: {task: demo.vector_sum, needs: [make], params: {length: {grid: [2, 4]}}}
    """))
    env = {**os.environ, "PYTHONPATH": f"{package}{os.pathsep}{REPO}"}
    command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(tmp_path / "r"),
               "--executor", "inline"]
    totals = []
    for version in (1, 1, 2):
        (package / "labvectors.py").write_text(LAB_TASK.format(version=version))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        totals.append(load_results(str(tmp_path / "r"), "bump", "total", latest=False))
    assert len(totals[0]) == 2 and len(totals[1]) == 2  # unchanged upstream: downstream cached
    assert len(totals[2]) == 4
    new = totals[2][~totals[2].run_id.isin(totals[1].run_id)]
    assert sorted(totals[0].total) == [1.0, 6.0] and sorted(new.total) == [2.0, 12.0]  # sum(arange(n)) * version
    made = load_results(str(tmp_path / "r"), "bump", "make")
    assert set(made.task) == {"lab.make_vector"} and sorted(made.task_version) == [1, 1, 2, 2]


def test_duplicate_points_are_one_run_and_counts_are_of_the_plan(write_spec, tmp_path: Path) -> None:
    # Invariant: points that validate to the same params are one run; "N of M stored" counts runs of the
    # current plan, not every stored run of the stage.
    spec, results = write_spec("""\
        name: dups
        stages:
          s: {task: demo.quadratic, params: {x: {grid: [1, 1.0, 2]}, y: {range: [0, 30]}}}
    """), tmp_path / "r"
    plan, _ = open_sweep(spec, results)
    assert (len(plan.stages["s"].runs), plan.stages["s"].duplicates) == (60, 30)

    class Recorder(NullProgress):
        def __init__(self) -> None:
            self.started: list[tuple[int, int, int]] = []

        def stage_started(self, stage: str, total: int, already_done: int, to_run: int) -> None:
            self.started.append((total, already_done, to_run))

    assert executed(run_spec(spec, results, executor="inline")) == {"s": 60}
    progress = Recorder()
    run_spec(spec, results, ["y={range: [1, 31]}"], executor="inline", progress=progress)
    assert progress.started == [(60, 58, 2)]
    (summary,) = summarize(*open_sweep(spec, results, ["y={range: [1, 31]}"]))
    assert (summary.total, summary.ok, summary.to_run, summary.duplicates) == (60, 60, 0, 30)
