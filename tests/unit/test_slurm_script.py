"""`orchestrator slurm` without a scheduler: the script's structure, its checks, the job chain, the job helpers."""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import ClusterError
from orchestrator.slurm import SlurmError, SlurmJob, check_ray, memory_bytes, sbatch_script, shared_root, submit
from orchestrator.slurm_job import free_ports, node_ip, wait_for_nodes

REPO = Path(__file__).resolve().parents[2]
SPEC = "name: unit\nstages:\n  s: {task: demo.sleep, params: {i: {range: [0, 3]}, seconds: 0}}\n"


def job(tmp_path: Path, **options: object) -> SlurmJob:
    fields: dict[str, object] = dict(spec="/shared/sweeps/unit.yaml", results="/shared/results",
                                     python=str(tmp_path / "bin" / "python"), workdir="/shared/work", job_name="unit",
                                     cpus_per_node=8, mem="64G", time="4:00:00")
    return SlurmJob(**{**fields, **options})  # type: ignore[arg-type]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_multi_node_script_has_sbatch_directives_from_the_options(tmp_path: Path) -> None:
    # Invariant: every allocation option becomes one #SBATCH directive; one task per node, GPUs per node.
    script = sbatch_script(job(tmp_path, nodes=4, gpus_per_node=4, partition="gpu", account="lab",
                               constraint="a100&ib"))
    directives = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["--job-name=unit", "--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=8",
                          "--gpus-per-node=4", "--mem=64G", "--time=4:00:00", "--partition=gpu", "--account=lab",
                          "--constraint=a100&ib", "--chdir=/shared/work", "--output=slurm-%x-%j.out"]
    assert "#SBATCH --gpus-per-node" not in sbatch_script(job(tmp_path, nodes=2))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # valid bash


STUB_PYTHON = """#!/bin/bash
if [[ $1 == -c ]]; then exec {python} "$@"; fi
echo "$(printf '%q ' "$0" "$@")" >>"$CALLS"  # one write per call: steps log concurrently
[[ $* == *"orchestrator run"* ]] && exit 1
exit 0
"""
STUB_SRUN = """#!/bin/bash
echo "$(printf '%q ' srun "$@")" >>"$CALLS"
echo "$RAY_AUTH_MODE $RAY_AUTH_TOKEN" >>"$CALLS.env"
case "$*" in
    *head-address*) echo "10.0.0.1 6379 10001" ;;
    *" start "*) exec sleep 60 ;;
esac
"""


def test_four_node_script_starts_a_head_then_three_workers_then_the_driver(tmp_path: Path) -> None:
    # Invariant: on 4 nodes the script starts the Ray head on the first node and workers on the other 3
    # (with the per-node GPU and CPU counts), waits for 1 then 4 nodes, runs the driver with the overrides
    # intact, stops Ray on exit with the driver's status and clears Ray's temp dir on every node; the token
    # travels in the environment, not in argv.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python", STUB_PYTHON.format(python=shlex.quote(sys.executable))), ("srun", STUB_SRUN),
                       ("scontrol", 'printf "node%s\\n" 1 2 3 4\n'), ("ray", "")):
        (bin_dir / name).write_text(text if text.startswith("#!") else "#!/bin/bash\n" + text)
        (bin_dir / name).chmod(0o755)
    overrides = ("seconds=0.5", "tag=it's a b")
    script = tmp_path / "job.sh"
    script.write_text(sbatch_script(job(tmp_path, nodes=4, gpus_per_node=4, overrides=overrides)))
    calls = tmp_path / "calls"
    job_id = f"unit-{os.getpid()}"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "SLURM_JOB_ID": job_id,
           "SLURM_JOB_NODELIST": "node[1-4]"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr  # the driver's exit status
    assert "Ray stopped; exit status 1" in done.stdout
    argv = [shlex.split(line) for line in calls.read_text().splitlines()]
    watched = [call[call.index("--watch") + 1:] for call in argv if "--watch" in call]
    assert [len(pids) for pids in watched] == [1, 2] and all(pid.isdigit() for pids in watched for pid in pids)
    argv = [call[:call.index("--watch")] if "--watch" in call else call for call in argv]
    total = 64 * 2**30
    ray, python = str(bin_dir / "ray"), str(bin_dir / "python")
    node = ["--block", "--num-cpus=8", "--num-gpus=4", f"--memory={total - int(total * 0.3)}",
            f"--object-store-memory={int(total * 0.3)}", "--dashboard-agent-listen-port=0",
            f"--temp-dir=/tmp/ray-{job_id}", "--disable-usage-stats"]
    wait = [python, "-m", "orchestrator.slurm_job", "wait-for-nodes", "10.0.0.1:6379"]
    expected = [
        ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=node1", python, "-m", "orchestrator.slurm_job",
         "head-address"],
        ["srun", "--nodes=1", "--ntasks=1", "--nodelist=node1", "--cpus-per-task=8", "--gpus-per-node=4", ray, "start",
         "--head", "--node-ip-address=10.0.0.1", "--port=6379", "--ray-client-server-port=10001",
         "--include-dashboard=false", *node],
        [*wait, "1", "--timeout", "600"],
        ["srun", "--nodes=3", "--ntasks-per-node=1", "--exclude=node1", "--cpus-per-task=8", "--gpus-per-node=4",
         ray, "start", "--address=10.0.0.1:6379", *node],
        [*wait, "4", "--timeout", "600"],
        [python, "-m", "orchestrator", "run", "/shared/sweeps/unit.yaml", *overrides, "--address", "10.0.0.1:6379",
         "--results", "/shared/results"],
        ["srun", "--overlap", "--nodes=4", "--ntasks-per-node=1", "rm", "-rf", f"/tmp/ray-{job_id}"],
    ]
    assert sorted(argv) == sorted(expected)  # the `ray start` steps run in the background: their order varies
    foreground = [call for call in argv if "start" not in call]
    assert foreground == [call for call in expected if "start" not in call]
    tokens = {line.split()[1] for line in (tmp_path / "calls.env").read_text().splitlines()}
    modes = {line.split()[0] for line in (tmp_path / "calls.env").read_text().splitlines()}
    assert modes == {"token"} and len(tokens) == 1 and len(next(iter(tokens))) == 64
    assert not any(next(iter(tokens)) in " ".join(call) for call in argv)


@pytest.mark.parametrize("root", ["results", "./r", "/tmp/r", "/var/tmp/r", "/dev/shm/r", "/tmp", "file:///tmp/r"])
def test_relative_and_node_local_results_roots_are_refused(root: str) -> None:
    # Invariant: a results root the job's nodes (and later jobs) may not share is refused, saying why.
    with pytest.raises(SlurmError, match=r"relative|node-local filesystem") as refused:
        shared_root(root)
    assert "filesystem every node mounts" in str(refused.value)


def test_a_link_into_tmp_is_node_local_and_shared_paths_and_uris_pass(tmp_path: Path) -> None:
    # Invariant: the check follows symbolic links; absolute shared paths and URIs are returned unchanged.
    link = tmp_path / "link"
    link.symlink_to("/tmp")
    with pytest.raises(SlurmError, match=r"node-local filesystem \(/tmp\)"):
        shared_root(str(link / "r"), local_roots=["/tmp"])
    for root in ("/home/someone/results", "s3://bucket/results", "/tmpfiles/r"):
        assert shared_root(root) == root


def test_cli_refuses_a_relative_results_root_before_submitting(tmp_path: Path) -> None:
    # Invariant: `orchestrator slurm` exits 2 with the reason, printing no script, when the root is relative.
    (tmp_path / "unit.yaml").write_text(SPEC)
    done = cli("slurm", "unit.yaml", "--cpus-per-node", "2", "--mem", "1G", "--time", "5", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "results root 'results' is relative" in done.stderr.replace("\n", "")


def test_cli_prints_a_script_with_quoted_overrides_and_array_needs_submit(tmp_path: Path) -> None:
    # Invariant: the printed script runs this python on the absolute spec with the overrides shell-quoted;
    # --array without --submit is refused.
    spec = tmp_path / "unit.yaml"
    spec.write_text(SPEC.replace("task: demo.sleep,", "task: demo.sleep, resources: {num_cpus: 1},"))
    args = ["slurm", "unit.yaml", "seconds=0.25", "--cpus-per-node", "2", "--mem", "1G", "--time", "5",
            "--results", "/shared/r"]
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"python={shlex.quote(sys.executable)}\n" in done.stdout and f"spec={spec}\n" in done.stdout
    assert '"$python" -m orchestrator run "$spec" seconds=0.25 --address' in done.stdout
    chained = cli(*args, "--array", "3", cwd=tmp_path)
    assert chained.returncode == 2 and "add --submit" in chained.stderr


def test_options_sbatch_would_misread_are_refused(tmp_path: Path) -> None:
    # Invariant: bad sizes, times and directive values fail before a script exists.
    assert memory_bytes("16G") == 16 * 2**30 and memory_bytes("500") == 500 * 2**20 and memory_bytes("0") == 0
    for options, message in (({"mem": "16 GB"}, "--mem"), ({"time": "4h"}, "--time"),
                             ({"partition": "gpu\n#SBATCH --x"}, "--partition"), ({"nodes": 0}, "--nodes")):
        with pytest.raises(SlurmError, match=message):
            sbatch_script(job(tmp_path, **options))


def test_array_submits_a_chain_each_after_the_previous(tmp_path: Path) -> None:
    # Invariant: K jobs are submitted with the same script, job k+1 depending on job k (afterany).
    sbatch = tmp_path / "sbatch"
    log = tmp_path / "sbatch.log"
    sbatch.write_text(f'#!/bin/bash\necho "$*" >>{log}\ncat >>{log}.scripts\n'
                      f'echo $((100 + $(wc -l <{log})))";cluster"\n')
    sbatch.chmod(0o755)
    assert submit("#!/bin/bash\ntrue\n", jobs=3, sbatch=str(sbatch)) == ["101", "102", "103"]
    assert log.read_text().splitlines() == ["--parsable", "--parsable --dependency=afterany:101",
                                            "--parsable --dependency=afterany:102"]
    assert (tmp_path / "sbatch.log.scripts").read_text() == "#!/bin/bash\ntrue\n" * 3


def test_a_python_without_ray_beside_it_is_refused() -> None:
    # Invariant: the job would start Ray with the `ray` beside its python; without one, nothing is generated.
    with pytest.raises(SlurmError, match="no `ray` executable beside /bin/sh"):
        check_ray("/bin/sh")


def test_job_helpers_find_an_address_and_stop_waiting_when_ray_start_exited() -> None:
    # Invariant: head-address gives an IPv4 and two distinct ports; waiting for nodes gives up as soon as a
    # watched `ray start` process is gone, instead of waiting out its timeout.
    ip, first, second = node_ip(), *free_ports(2)
    assert ipaddress.ip_address(ip).version == 4 and first != second
    exited = subprocess.Popen(["true"])
    exited.wait()
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"pid {exited.pid}"):
        wait_for_nodes(f"127.0.0.1:{free_ports(1)[0]}", 1, timeout_s=60, watch=[exited.pid], poll_s=0.1)
    assert time.monotonic() - start < 10
