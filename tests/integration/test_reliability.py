"""Reliability: killed workers, lost nodes, OOM kills, corrupted files, missing artifacts, changed specs."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.api import open_sweep, run_spec
from orchestrator.spec import load_spec
from orchestrator.status import StageSummary, summarize
from orchestrator.store import load_results
from tests.helpers import executing_workers

REPO = Path(__file__).resolve().parents[2]


def summaries_of(spec: Path, results: Path) -> list[StageSummary]:
    return summarize(*open_sweep(spec, results))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_worker_kills_lose_and_duplicate_nothing(write_spec, tmp_path: Path) -> None:
    # Invariant: SIGKILLing >= 20 busy workers during a 200-run sweep leaves every run stored exactly once,
    # with the same values as an undisturbed run.
    spec = write_spec("""\
        name: kills
        stages:
          s:
            task: demo.sleep
            retries: {system: 10, backoff_s: 0.05}
            resources: {num_cpus: 1}
            params: {i: {range: [0, 200]}, seconds: 0.15}
    """)
    killed: list[int] = []
    done = threading.Event()
    rng = random.Random(0)

    def killer() -> None:
        while not done.is_set() and len(killed) < 25:
            workers = [w for w in executing_workers() if w.pid not in killed]
            if workers:
                victim = rng.choice(workers)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(victim.pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        outcome, = run_spec(spec, tmp_path / "disturbed")
    finally:
        done.set()
        thread.join()
    assert len(killed) >= 20, f"only {len(killed)} kills landed"
    disturbed = load_results(str(tmp_path / "disturbed"), "kills", "s", latest=False)
    assert outcome.failed == 0 and len(disturbed) == 200 and disturbed.run_id.is_unique
    run_spec(spec, tmp_path / "calm")
    undisturbed = load_results(str(tmp_path / "calm"), "kills", "s")
    merged = disturbed.merge(undisturbed, on="run_id", suffixes=("", "_calm"))
    assert len(merged) == 200 and (merged.value == merged.value_calm).all()
    retried = int((disturbed.attempt > 1).sum())
    print(f"\nworker kills: {len(killed)} kills, 200 runs, {retried} retried, 0 lost, 0 duplicated")


NODE_LOSS_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    from orchestrator.api import run_spec
    from orchestrator.store import load_results

    spec, results = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    def remove():
        time.sleep(3)
        cluster.remove_node(worker)
    threading.Thread(target=remove).start()
    outcome, = run_spec(spec, results)
    df = load_results(results, "nodeloss", "s", latest=False)
    print(json.dumps({"rows": len(df), "unique": int(df.run_id.nunique()), "failed": outcome.failed,
                      "retried": int((df.attempt > 1).sum()), "nodes": sorted(set(df.node)),
                      "worker": worker.node_id[:12], "values_ok": bool((df.value == df.i * df.i).all())}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
def test_node_loss_reschedules_runs(tmp_path: Path) -> None:
    # Invariant: removing a worker node mid-sweep reschedules its runs on the remaining node; nothing lost.
    spec = tmp_path / "nodeloss.yaml"
    spec.write_text(textwrap.dedent("""\
        name: nodeloss
        stages:
          s:
            task: demo.sleep
            retries: {system: 5, backoff_s: 0.2}
            params: {i: {range: [0, 60]}, seconds: 0.25}
    """))
    script = tmp_path / "script.py"
    script.write_text(NODE_LOSS_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(spec), str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=400, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == report["unique"] == 60 and report["failed"] == 0 and report["values_ok"]
    assert report["retried"] > 0  # some runs were on the lost node
    print(f"\nnode loss: 60 runs, {report['retried']} rescheduled, 0 lost, 0 duplicated")


@pytest.mark.slow
def test_ray_oom_kill_is_a_failure_row_not_a_hang(tmp_path: Path) -> None:
    # Invariant: a run that Ray's memory monitor kills is recorded as out_of_memory, and the sweep ends.
    spec = tmp_path / "oom.yaml"
    spec.write_text(textwrap.dedent("""\
        name: oom
        stages:
          s:
            task: demo.allocate
            retries: {system: 1, backoff_s: 0.1}
            params: {megabytes: {grid: [4, 6000]}}
    """))
    memory = psutil.virtual_memory()
    threshold = min(0.95, (memory.total - memory.available + 2.5 * 2**30) / memory.total)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_memory_usage_threshold": f"{threshold:.3f}",
           "RAY_memory_monitor_refresh_ms": "100"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(tmp_path / "r"),
                           "--num-cpus", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    df = load_results(str(tmp_path / "r"), "oom", "s").set_index("megabytes")
    assert df.loc[4, "status"] == "ok"
    assert df.loc[6000, "status"] == df.loc[6000, "error_type"] == "out_of_memory"
    print(f"\nOOM: killed by Ray and recorded in {time.perf_counter() - start:.0f} s")


@pytest.mark.usefixtures("ray_session")
def test_corrupted_and_foreign_parquet_files(write_spec, tmp_path: Path) -> None:
    # Invariant: a corrupted part is reported by read-only commands and quarantined by `run` only (its runs
    # recomputed); files not named like the store's parts, or without its columns, are not data.
    spec = write_spec("name: files\nstages:\n  s: {task: demo.noop, params: {i: {range: [0, 20]}}}\n")
    results = tmp_path / "r"
    run_spec(spec, results)
    stage_dir = results / "files" / "s"
    (good,) = list(stage_dir.glob("part-*.parquet"))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # a torn file, as a crashed copy tool would leave
    pq.write_table(pa.table({"a": [1, 2]}), stage_dir / "part-foreign.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), stage_dir / "part-00000000000000000001-0000abcd.parquet")
    (stage_dir / "part-x.parquet.bak").write_bytes(data)
    with pytest.warns(UserWarning, match="unreadable results file skipped"):
        summarize(*open_sweep(spec, results))  # status / plan: report, leave the file where it is
    assert good.is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome, = run_spec(spec, results)
    messages = " ".join(str(w.message) for w in caught)
    assert "unreadable results file moved to" in messages and "not a results file of this tool" in messages
    assert outcome.executed == 20
    assert (stage_dir / "_quarantine" / good.name).is_file()
    df = load_results(str(results), "files", "s")
    assert len(df) == 20 and df.run_id.is_unique


@pytest.mark.usefixtures("ray_session")
def test_missing_upstream_artifact_is_a_clear_failure(write_spec, tmp_path: Path) -> None:
    # Invariant: a downstream run whose upstream artifact vanished fails as missing_upstream, naming the path.
    spec = write_spec("""\
        name: dag
        stages:
          vec: {task: demo.vector, params: {length: 3}}
          total: {task: demo.vector_sum, needs: [vec], params: {length: 3, power: {grid: [1]}}}
    """)
    results = tmp_path / "r"
    run_spec(spec, results)
    shutil.rmtree(results / "dag" / "artifacts")
    spec.write_text(spec.read_text().replace("grid: [1]", "grid: [1, 2]"))
    outcome = run_spec(spec, results)[1]
    assert outcome.failed == 1
    df = load_results(str(results), "dag", "total").set_index("power")
    assert df.loc[2, "error_type"] == "missing_upstream" and "artifacts" in df.loc[2, "error"]
    assert df.loc[1, "status"] == "ok"  # the earlier result is kept


@pytest.mark.usefixtures("ray_session")
def test_changed_spec_adds_new_runs_and_reports_removed(write_spec, tmp_path: Path) -> None:
    # Invariant: new parameter values create new run ids; removed ones are reported and kept, never deleted.
    spec = write_spec("name: drift\nstages:\n  s: {task: demo.noop, params: {i: {grid: [1, 2, 3]}}}\n")
    results = tmp_path / "r"
    run_spec(spec, results)
    spec.write_text(spec.read_text().replace("[1, 2, 3]", "[2, 3, 4]"))
    outcome, = run_spec(spec, results)
    assert outcome.executed == 1
    summary, = summaries_of(spec, results)
    assert (summary.total, summary.ok, summary.stored_not_in_spec) == (3, 3, 1)
    assert sorted(load_results(str(results), "drift", "s").i) == [1, 2, 3, 4]


def test_no_pickle_in_results_or_artifacts_and_safe_yaml(write_spec, tmp_path: Path) -> None:
    # Invariant: specs cannot construct Python objects; the store never writes pickle.
    from orchestrator.errors import SpecError

    spec = write_spec("name: !!python/object/apply:os.system ['echo pwned']\nstages: {}\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(spec)
    source = "\n".join(p.read_text() for p in (REPO / "orchestrator").glob("*.py"))
    assert "import pickle" not in source and "pickle.dump" not in source
