"""`orchestrator slurm`: one sbatch script that starts Ray on a Slurm allocation and runs the sweep on it.

Ray's documented way onto Slurm: the batch script starts a Ray head on the allocation's first node and
Ray workers on the others (`srun ... ray start --block`), waits until every node has joined, runs the
driver against the head, and stops Ray when the driver ends or the job is cancelled. Resume is the
orchestrator's own: finished runs are read from the Parquet store, so submitting the same command again,
or a chain of jobs (`submit(..., jobs=K)`), runs only what is missing.

Script generation is pure (options in, text out; no Ray, no Slurm); `check_ray` and `submit` are the
two functions that look at the machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.cluster import RAY_ENV_DEFAULTS
from orchestrator.errors import OrchestratorError

# Directories that are private to one machine on every cluster we know of: a results root there
# is a different directory on each node and in each later job, so nothing would resume.
NODE_LOCAL_ROOTS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/local", "/localscratch", "/lscratch",
                    "/scratch/local")
NODE_JOIN_TIMEOUT_S = 600
OBJECT_STORE_FRACTION = 0.3  # Ray's own default share of memory for the object store
_MEM = re.compile(r"(\d+)([KMGT]?)", re.IGNORECASE)
_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
_DIRECTIVE_VALUE = re.compile(r"[^\s\"'\\#$`]+")  # one token an #SBATCH line cannot misread


class SlurmError(OrchestratorError):
    """Options that cannot make a working job, or a submission sbatch refused."""

    exit_code = 2


@dataclass(frozen=True)
class SlurmJob:
    """What one job runs (the sweep and its environment) and the allocation it asks for."""

    spec: str
    results: str
    python: str
    workdir: str
    job_name: str
    cpus_per_node: int
    mem: str
    time: str
    overrides: tuple[str, ...] = ()
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None


def shared_root(root: str, local_roots: Iterable[str] = NODE_LOCAL_ROOTS) -> str:
    """`root` if every node of a job, and every later job, sees the same directory there; else SlurmError.

    URIs (s3://, gs://, ...) are shared by nature; a local path must be absolute and outside `local_roots`.
    """
    path = root.removeprefix("file://")
    if "://" in path:
        return root
    if not os.path.isabs(path):
        raise SlurmError(
            f"results root '{root}' is relative: the job's nodes and later jobs must all see the same directory. "
            "Pass an absolute path on a filesystem every node mounts (a project or home directory), or a "
            "pyarrow.fs URI."
        )
    for candidate in {os.path.normpath(path), os.path.realpath(path)}:
        for local in local_roots:
            if candidate == local or candidate.startswith(local.rstrip("/") + "/"):
                raise SlurmError(
                    f"results root '{root}' is on a node-local filesystem ({local}): each node, and each later job, "
                    "would see a different directory, so nothing could resume. Pass a path on a filesystem "
                    "every node mounts (a project or home directory), or a pyarrow.fs URI."
                )
    return root


def memory_bytes(mem: str) -> int:
    """Slurm's --mem (`16G`, `500M`, `16000` in MB; 0 means the whole node) in bytes."""
    match = _MEM.fullmatch(mem.strip())
    if not match:
        raise SlurmError(f"--mem {mem!r}: expected a size such as 16G, 500M or 16000 (megabytes)")
    number, unit = int(match.group(1)), (match.group(2) or "M").upper()
    return number << (10 * ("KMGT".index(unit) + 1))


def sbatch_script(job: SlurmJob) -> str:
    """The batch script for `job`: #SBATCH directives, Ray head and workers, the driver, the cleanup trap."""
    _check(job)
    return "\n".join([*_directives(job), "", "set -uo pipefail", *_settings(job), "", _BODY_START, _driver_line(job),
                      _BODY_END])


def check_ray(python: str) -> None:
    """Refuse a `python` without the `ray` executable beside it (the job starts Ray with that one)."""
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        raise SlurmError(f"--python {python}: not an absolute path to an executable")
    ray = Path(python).parent / "ray"
    if not os.access(ray, os.X_OK):
        raise SlurmError(f"no `ray` executable beside {python} (expected {ray}); install ray in that environment")


def submit(script: str, jobs: int = 1, sbatch: str = "sbatch") -> list[str]:
    """Submit `script` `jobs` times, each job starting after the previous one ended (`afterany`).

    Every job resumes where the one before stopped (time limit, scancel, node failure), so a chain of K
    jobs runs a sweep longer than the partition's time limit. Returns the job ids in order.
    """
    ids: list[str] = []
    for _ in range(jobs):
        command = [sbatch, "--parsable"] + ([f"--dependency=afterany:{ids[-1]}"] if ids else [])
        try:
            done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"cannot run {sbatch}: {exc}" + _submitted(ids)) from None
        if done.returncode != 0:
            raise SlurmError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}" + _submitted(ids))
        ids.append(done.stdout.strip().split(";")[0])
    return ids


def _submitted(ids: list[str]) -> str:
    return f" (already submitted: {' '.join(ids)})" if ids else ""


def _check(job: SlurmJob) -> None:
    shared_root(job.results)
    for name, value in (("--nodes", job.nodes), ("--cpus-per-node", job.cpus_per_node)):
        if value < 1:
            raise SlurmError(f"{name} {value}: must be at least 1")
    if job.gpus_per_node < 0:
        raise SlurmError(f"--gpus-per-node {job.gpus_per_node}: must be 0 or more")
    memory_bytes(job.mem)
    if not _TIME.fullmatch(job.time.strip()):
        raise SlurmError(f"--time {job.time!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    for name, option in (("--partition", job.partition), ("--account", job.account),
                         ("--constraint", job.constraint)):
        if option is not None and not _DIRECTIVE_VALUE.fullmatch(option):
            raise SlurmError(f"{name} {option!r}: no spaces, quotes, '#', '$' or backslashes allowed")
    for name, path in (("python", job.python), ("working directory", job.workdir)):
        if not os.path.isabs(path):
            raise SlurmError(f"{name} '{path}' must be an absolute path")


def _directives(job: SlurmJob) -> list[str]:
    options = [
        f"--job-name={re.sub(r'[^A-Za-z0-9._-]', '_', job.job_name)}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",  # one `ray start` per node; Ray schedules the runs inside it
        f"--cpus-per-task={job.cpus_per_node}",
        *([f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []),
        f"--mem={job.mem.strip()}",
        f"--time={job.time.strip()}",
        *([f"--partition={job.partition}"] if job.partition else []),
        *([f"--account={job.account}"] if job.account else []),
        *([f"--constraint={job.constraint}"] if job.constraint else []),
        f"--chdir={job.workdir}",
        "--output=slurm-%x-%j.out",
    ]
    return ["#!/bin/bash", "# Generated by `orchestrator slurm`: Ray on this allocation, then the sweep on it.",
            *(f"#SBATCH {option}" for option in options)]


def _settings(job: SlurmJob) -> list[str]:
    ray_memory = ""
    total = memory_bytes(job.mem)
    if total:  # Ray's memory resource is the allocation's, not the whole node's (0: Slurm gives the node)
        store = int(total * OBJECT_STORE_FRACTION)
        ray_memory = f"--memory={total - store} --object-store-memory={store}"
    lines = [
        f"python={shlex.quote(job.python)}",
        f"spec={shlex.quote(job.spec)}",
        f"results={shlex.quote(job.results)}",
        f"cpus_per_node={job.cpus_per_node}",
        f"gpus_per_node={job.gpus_per_node}",
        f"ray_memory=({ray_memory})",
        f"node_join_timeout_s={NODE_JOIN_TIMEOUT_S}",
    ]
    # The same Ray settings a local `orchestrator run` uses (bounded OOM retries, quiet workers), set before
    # `ray start` so the raylets and workers have them; values already in the environment win.
    # A SIGTERM makes `ray start --block` wait (30 s by default) for its node to drain; a batch job has nothing
    # to drain once its driver stopped, and Slurm's KillWait is often shorter.
    environment = {**RAY_ENV_DEFAULTS, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    lines += [f"export {key}=\"${{{key}:-{value}}}\"" for key, value in environment.items()]
    return lines


def _driver_line(job: SlurmJob) -> str:
    overrides = " ".join(shlex.quote(o) for o in job.overrides)
    # Ray's crash handler would turn the SIGTERM of scancel into an abort; without it the driver stores
    # the rows of finished runs first.
    return (f'RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1 "$python" -m orchestrator run "$spec" {overrides}'
            f'{" " if overrides else ""}--address "$address" --results "$results" &')


_BODY_START = r"""
ray="${python%/*}/ray"
ray_tmp="/tmp/ray-$SLURM_JOB_ID"  # short: Ray's socket paths must fit in 107 bytes
umask 077

# Token authentication: one fresh token per job, held only in the environment (never in this text or on
# a command line, where `ps` would show it); srun hands the environment to every node.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN="$("$python" -c 'import secrets; print(secrets.token_hex(32))')"
export RAY_AUTH_TOKEN
unset RAY_ADDRESS

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
steps=()      # the srun steps running `ray start --block`
driver=""     # the orchestrator while it runs
signalled=""  # TERM or INT once the job is being cancelled or has reached its time limit
stop() {
    local status=$?
    trap '' TERM INT
    # scancel and the time limit send SIGTERM to every process of the job, the driver included: it stores
    # the rows of finished runs and exits; wait for that before Ray goes away.
    if [[ -n $driver ]]; then wait "$driver"; fi
    if ((${#steps[@]})); then
        kill -TERM "${steps[@]}" 2>/dev/null
        wait "${steps[@]}" 2>/dev/null
    fi
    # Ray's logs and sockets on every node; a cancelled job can start no more steps, and its logs stay.
    if [[ -z $signalled ]] && ((${#nodes[@]})); then
        srun --overlap --nodes="${#nodes[@]}" --ntasks-per-node=1 rm -rf "$ray_tmp"
    fi
    echo "orchestrator slurm: Ray stopped; exit status $status"
    exit "$status"
}
trap stop EXIT
trap 'signalled=TERM; exit 143' TERM
trap 'signalled=INT; exit 130' INT

read -r head_ip port client_port < <(srun --overlap --nodes=1 --ntasks=1 --nodelist="$head_node" \
    "$python" -m orchestrator.slurm_job head-address)
if [[ -z ${client_port:-} ]]; then echo "orchestrator slurm: no address for the Ray head on $head_node" >&2; exit 1; fi
address="$head_ip:$port"
# Each `ray start` step gets its node's whole share (srun of Slurm 22.05 does not inherit --cpus-per-task).
step=(--cpus-per-task="$cpus_per_node")
if ((gpus_per_node)); then step+=(--gpus-per-node="$gpus_per_node"); fi
ray_node=(--block --num-cpus="$cpus_per_node" --num-gpus="$gpus_per_node" "${ray_memory[@]}"
          --dashboard-agent-listen-port=0 --temp-dir="$ray_tmp" --disable-usage-stats)

echo "orchestrator slurm: Ray head on $head_node ($address), ${#nodes[@]} node(s): ${nodes[*]}"
srun --nodes=1 --ntasks=1 --nodelist="$head_node" "${step[@]}" \
    "$ray" start --head --node-ip-address="$head_ip" --port="$port" --ray-client-server-port="$client_port" \
    --include-dashboard=false "${ray_node[@]}" &
steps+=($!)
"$python" -m orchestrator.slurm_job wait-for-nodes "$address" 1 --timeout "$node_join_timeout_s" \
    --watch "${steps[@]}" || exit 1
if ((${#nodes[@]} > 1)); then
    srun --nodes=$((${#nodes[@]} - 1)) --ntasks-per-node=1 --exclude="$head_node" "${step[@]}" \
        "$ray" start --address="$address" "${ray_node[@]}" &
    steps+=($!)
    "$python" -m orchestrator.slurm_job wait-for-nodes "$address" "${#nodes[@]}" --timeout "$node_join_timeout_s" \
        --watch "${steps[@]}" || exit 1
fi

# The sweep: runs already stored (by an earlier job of this command) are skipped.""".lstrip("\n")

_BODY_END = r"""driver=$!
wait "$driver"
status=$?
driver=""
exit "$status"
"""
