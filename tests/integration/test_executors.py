"""The inline executor: same rows, same store, same resume as Ray, with no Ray at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.api import run_spec
from orchestrator.store import load_results

REPO = Path(__file__).resolve().parents[2]
SPEC = """\
    name: same
    stages:
      surface:
        task: demo.quadratic
        params: {x: {grid: [0, 0.5, 1]}, y: {range: [-2, 1]}, noise: 0.3}
      vectors:
        task: demo.vector
        params: {length: {grid: [3, 4]}, scale: 2.0}
      total:
        task: demo.vector_sum
        needs: [vectors]
        params: {length: {grid: [3, 4]}, power: 3}
"""
METRICS = {"surface": ["loss"], "vectors": ["norm"], "total": ["total", "upstream_run"]}


def test_inline_and_ray_give_identical_rows(write_spec, tmp_path: Path, ray_session) -> None:
    # Invariant: the executor changes where runs execute, never what they compute or how they are addressed.
    spec = write_spec(SPEC)
    run_spec(spec, tmp_path / "ray", executor="ray")
    run_spec(spec, tmp_path / "inline", executor="inline")
    for stage, columns in METRICS.items():
        ray_rows = load_results(str(tmp_path / "ray"), "same", stage).sort_values("run_id")
        inline_rows = load_results(str(tmp_path / "inline"), "same", stage).sort_values("run_id")
        assert list(ray_rows.run_id) == list(inline_rows.run_id) and len(ray_rows) > 0
        for column in columns:
            assert list(ray_rows[column]) == list(inline_rows[column]), (stage, column)
        assert (inline_rows.status == "ok").all()


INLINE_SCRIPT = textwrap.dedent("""
    import json, sys
    from orchestrator.api import run_spec
    first = run_spec(sys.argv[1], sys.argv[2], executor="inline")
    again = run_spec(sys.argv[1], sys.argv[2], executor="inline")
    print(json.dumps({"first": {o.name: o.executed for o in first}, "again": {o.name: o.executed for o in again},
                      "ray_imported": "ray" in sys.modules}))
""")


def test_inline_runs_grid_and_tune_stages_without_importing_ray(tmp_path: Path) -> None:
    # Invariant: `--executor inline` needs no Ray (not even its import), tunes with Optuna, and resumes.
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: noray
        stages:
          grid: {task: demo.quadratic, params: {x: {grid: [0, 1]}}}
          val:
            task: demo.quadratic
            params: {y: {grid: [-2, 0]}}
            tune: {metric: loss, mode: min, group_by: [y], num_samples: 6, space: {x: {uniform: [-3, 3]}}}
          test: {transfer: val, params: {noise: 0.0}}
    """))
    script = tmp_path / "script.py"
    script.write_text(INLINE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(spec), str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"first": {"grid": 2, "val": 12, "test": 2}, "again": {"grid": 0, "val": 0, "test": 0},
                      "ray_imported": False}
    test = load_results(str(tmp_path / "r"), "noray", "test")
    val = load_results(str(tmp_path / "r"), "noray", "val")
    assert set(test.selected_from) <= set(val.run_id) and len(test) == 2


@pytest.mark.usefixtures("ray_session")
def test_tune_trials_go_through_the_scheduler_and_resume(write_spec, tmp_path: Path) -> None:
    # Invariant: tune trials are ordinary runs of the one path: stored once each, progress counts them,
    # and a second run of the same spec asks Optuna for nothing new.
    spec = write_spec("""\
        name: tuned
        stages:
          val:
            task: demo.quadratic
            params: {y: -2}
            tune: {metric: loss, mode: min, num_samples: 10, space: {x: {uniform: [-3, 3]}}}
    """)
    (first,) = run_spec(spec, tmp_path / "r")
    (again,) = run_spec(spec, tmp_path / "r")
    assert (first.executed, first.ok, again.executed) == (10, 10, 0)
    rows = load_results(str(tmp_path / "r"), "tuned", "val")
    assert rows.run_id.is_unique and len(rows) == 10 and (rows.status == "ok").all()
