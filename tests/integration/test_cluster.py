"""The same command on a real multi-process cluster: `ray job submit`, and GPU placement across nodes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.store import load_results
from tests.helpers import ray_head, submit_job

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_job_submit_runs_the_same_command(tmp_path: Path) -> None:
    # Invariant: `ray job submit -- python -m orchestrator run <spec>` on a head bound to 127.0.0.1 stores rows.
    spec = tmp_path / "job.yaml"
    spec.write_text("name: job\nstages:\n  s: {task: demo.quadratic, params: {x: {grid: [0, 1, 2]}}}\n")
    results = tmp_path / "results"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    with ray_head(env) as (_, dashboard):
        job = submit_job(dashboard, env, [sys.executable, "-m", "orchestrator", "run", str(spec), "--results",
                                          str(results)])
        assert job.returncode == 0, job.stdout + job.stderr
    df = load_results(str(results), "job", "s")
    assert sorted(df.x) == [0.0, 1.0, 2.0] and (df.status == "ok").all()


def readme_job_submit_line() -> str:
    """The README's `ray job submit` command, joined from its backslash-continued lines."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "ray job submit" in b)
    return block.replace("\\\n", " ").strip()


def test_the_readme_job_submit_line_works_verbatim(tmp_path: Path) -> None:
    # Invariant: the README's line, run by bash from the checkout with only the head address and the results
    # path replaced, stores rows that record the submitting checkout's commit.
    line = readme_job_submit_line()
    assert "http://HEAD:8265" in line and "/shared/results" in line
    results = tmp_path / "results"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # the cluster's python
    with ray_head(env) as (_, dashboard):
        line = line.replace("http://HEAD:8265", f"http://127.0.0.1:{dashboard}").replace("/shared/results",
                                                                                        str(results))
        if not (REPO / ".venv" / "bin").is_dir():  # a checkout whose environment lives elsewhere
            line = line.replace(".venv/bin/", f"{bin_dir}/")
        deadline = time.time() + 180
        while True:  # the head's job server takes a moment to start
            job = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            if job.returncode == 0 or time.time() > deadline:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    df = load_results(str(results), "demo", "sums")
    assert len(df) == 12 and (df.status == "ok").all()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert set(df.git_commit) == {commit} and df.git_dirty.notna().all()


CLUSTER_SCRIPT = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from orchestrator.api import run_spec
    from orchestrator.store import load_results

    spec, results = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    run_spec(spec, results)
    gpu = load_results(results, "placement", "gpu")
    cpu = load_results(results, "placement", "cpu")
    print(json.dumps({"gpu_node": gpu_node.node_id[:12], "gpu_nodes": sorted(set(gpu.node)),
                      "gpu_ok": int((gpu.status == "ok").sum()), "cpu_ok": int((cpu.status == "ok").sum())}))
    ray.shutdown()
    cluster.shutdown()
""")


def test_gpu_stages_land_only_on_gpu_nodes(tmp_path: Path) -> None:
    # Invariant: with one GPU node and one CPU-only node, every GPU run executes on the GPU node.
    spec = tmp_path / "placement.yaml"
    spec.write_text(textwrap.dedent("""\
        name: placement
        stages:
          gpu:
            task: demo.sleep
            resources: {num_cpus: 0.5, num_gpus: 0.5}
            params: {i: {range: [0, 12]}, seconds: 0.2}
          cpu:
            task: demo.sleep
            params: {i: {range: [0, 6]}, seconds: 0.1}
    """))
    script = tmp_path / "cluster_script.py"
    script.write_text(CLUSTER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(spec), str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gpu_ok"] == 12 and report["cpu_ok"] == 6
    assert [n.split(":")[1] for n in report["gpu_nodes"]] == [report["gpu_node"]]
