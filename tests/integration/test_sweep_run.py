"""End to end on a real local Ray: rows, resume, failures, retry, artifacts, GPU reservations."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.errors import ResourceError, StoreError
from orchestrator.execute import run_device
from orchestrator.runner import RunOptions
from orchestrator.store import SweepLock, load_results

pytestmark = pytest.mark.usefixtures("ray_session")





def test_rows_params_provenance_and_resume(write_spec, tmp_path: Path) -> None:
    # Invariant: every run is one row with params, metrics and provenance; a re-run executes nothing.
    spec = write_spec("""\
        name: quad
        stages:
          grid:
            task: demo.quadratic
            params: {x: {grid: [0, 1, 2]}, y: {range: [-3, 0]}, noise: 0.0}
    """)
    outcome, = run_spec(spec, tmp_path / "r")
    assert (outcome.executed, outcome.ok, outcome.failed) == (9, 9, 0)
    df = load_results(str(tmp_path / "r"), "quad", "grid")
    assert len(df) == 9 and df["run_id"].is_unique
    row = df[(df.x == 1.0) & (df.y == -2.0)].iloc[0]
    assert row["loss"] == 0.0 and row["status"] == "ok" and row["attempt"] == 1
    for column in ("git_commit", "git_dirty", "versions", "node", "started_at", "duration_s", "task_version", "seed"):
        assert column in df.columns
    assert row["git_dirty"] in (True, False) or row["git_commit"] is None
    assert '"ray"' in row["versions"] and row["node"]
    again, = run_spec(spec, tmp_path / "r")
    assert again.executed == 0
    assert len(load_results(str(tmp_path / "r"), "quad", "grid")) == 9


def test_failures_are_rows_and_retry_supersedes(write_spec, tmp_path: Path) -> None:
    # Invariant: a raising run becomes a failure row; retry re-runs only failures; history is kept.
    marker = tmp_path / "broken"
    marker.write_text("x")
    spec = write_spec(f"""\
        name: flaky
        stages:
          s:
            task: demo.flaky
            params: {{i: {{range: [0, 10]}}, fail_if_divisible_by: 4, fail_while_file_exists: "{marker}"}}
    """)
    outcome, = run_spec(spec, tmp_path / "r")
    assert (outcome.ok, outcome.failed) == (7, 3)
    df = load_results(str(tmp_path / "r"), "flaky", "s")
    failed = df[df.status != "ok"]
    assert sorted(failed.i) == [0, 4, 8]
    assert set(failed.error_type) == {"task_error"}
    assert failed.error.str.contains("planted failure").all()
    assert failed.traceback.str.contains("Traceback").all()
    assert run_spec(spec, tmp_path / "r")[0].executed == 0  # run does not retry
    marker.unlink()
    retried, = run_spec(spec, tmp_path / "r", None, RunOptions(retry=True))
    assert (retried.executed, retried.ok) == (3, 3)
    latest = load_results(str(tmp_path / "r"), "flaky", "s")
    assert len(latest) == 10 and (latest.status == "ok").all()
    assert sorted(latest[latest.attempt == 2].i) == [0, 4, 8]
    history = load_results(str(tmp_path / "r"), "flaky", "s", latest=False)
    assert len(history) == 13


def test_error_retries_when_the_stage_asks(write_spec, tmp_path: Path) -> None:
    # Invariant: `retries.errors` re-runs a raising run; attempts are counted.
    spec = write_spec("""\
        name: flaky2
        stages:
          s:
            task: demo.flaky
            retries: {errors: 2, backoff_s: 0.01}
            params: {i: {grid: [3, 5]}, fail_if_divisible_by: 3}
    """)
    outcome, = run_spec(spec, tmp_path / "r")
    df = load_results(str(tmp_path / "r"), "flaky2", "s").set_index("i")
    assert outcome.failed == 1
    assert df.loc[3, "status"] == "task_error" and df.loc[3, "attempt"] == 3
    assert df.loc[5, "status"] == "ok" and df.loc[5, "attempt"] == 1


def test_needs_passes_real_artifacts(write_spec, tmp_path: Path) -> None:
    # Invariant: a downstream run reads the artifact of the upstream run that matches its shared params.
    spec = write_spec("""\
        name: dag
        stages:
          vec:
            task: demo.vector
            params: {length: {grid: [3, 5]}, scale: 2.0}
          total:
            task: demo.vector_sum
            needs: [vec]
            params: {length: {grid: [3, 5]}, scale: 2.0, power: 2}
    """)
    run_spec(spec, tmp_path / "r")
    vec = load_results(str(tmp_path / "r"), "dag", "vec").set_index("length")
    total = load_results(str(tmp_path / "r"), "dag", "total").set_index("length")
    for length in (3, 5):
        assert total.loc[length, "upstream_run"] == vec.loc[length, "run_id"]
        assert total.loc[length, "total"] == pytest.approx(vec.loc[length, "norm"] ** 2)
        assert (tmp_path / "r" / "dag" / "artifacts" / vec.loc[length, "run_id"] / "vector.npy").is_file()


def test_half_gpu_runs_never_exceed_four_at_once(write_spec, tmp_path: Path) -> None:
    # Invariant: with 2 logical GPUs, num_gpus=0.5 admits at most 4 concurrent runs; runs see their GPU ids,
    # and the device stays "cpu" (no CUDA device on this host), so a torch task does not crash.
    spec = write_spec("""\
        name: gpu
        stages:
          s:
            task: demo.sleep
            resources: {num_cpus: 0, num_gpus: 0.5}
            params: {i: {range: [0, 16]}, seconds: 0.4}
    """)
    run_spec(spec, tmp_path / "r")
    df = load_results(str(tmp_path / "r"), "gpu", "s")
    assert len(df) == 16 and (df.gpu_ids != "").all()
    assert set(df.gpu_ids) <= {"0", "1"}
    assert (df.device == run_device([0])).all()
    events = sorted([(t, 1) for t in df.t_start] + [(t, -1) for t in df.t_end], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 2 <= peak <= 4


def test_infeasible_resources_are_refused_before_running(write_spec, tmp_path: Path) -> None:
    # Invariant: a stage no node can satisfy is refused (Ray would leave it pending forever).
    spec = write_spec("""\
        name: big
        stages:
          s: {task: demo.noop, resources: {num_gpus: 4}, params: {i: 1}}
    """)
    with pytest.raises(ResourceError, match="no node can provide"):
        run_spec(spec, tmp_path / "r")
    assert not list((tmp_path / "r").rglob("*.parquet"))


def test_memory_reservation_is_enforced_per_run(write_spec, tmp_path: Path) -> None:
    # Invariant: a run allocating past its `memory` reservation fails as memory_limit; the others finish.
    spec = write_spec("""\
        name: mem
        stages:
          s:
            task: demo.allocate
            resources: {num_cpus: 1, memory: 200MiB}
            params: {megabytes: {grid: [10, 600]}}
    """)
    run_spec(spec, tmp_path / "r")
    df = load_results(str(tmp_path / "r"), "mem", "s").set_index("megabytes")
    assert df.loc[10, "status"] == "ok"
    assert df.loc[600, "status"] == df.loc[600, "error_type"] == "memory_limit"


def test_parts_are_written_atomically_and_batched(write_spec, tmp_path: Path) -> None:
    # Invariant: 300 runs land in few Parquet parts, each readable; no temporary file remains.
    spec = write_spec("""\
        name: many
        stages:
          s: {task: demo.noop, params: {i: {range: [0, 300]}}}
    """)
    run_spec(spec, tmp_path / "r")
    stage_dir = tmp_path / "r" / "many" / "s"
    parts = sorted(stage_dir.glob("part-*.parquet"))
    assert 1 <= len(parts) <= 5
    assert not [p for p in stage_dir.iterdir() if p.name.startswith(".tmp")]
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 300


def test_second_driver_is_refused(write_spec, tmp_path: Path) -> None:
    # Invariant: two drivers on one sweep cannot interleave; the second gets a clear message.
    spec = write_spec("name: locked\nstages:\n  s: {task: demo.noop, params: {i: 1}}\n")
    _, store = open_sweep(spec, tmp_path / "r")
    with SweepLock(store), pytest.raises(StoreError, match="is being run by pid"):
        run_spec(spec, tmp_path / "r")
