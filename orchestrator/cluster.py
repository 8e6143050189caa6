"""Connecting to Ray (local or a cluster, the same way under `ray job submit`) and checking resources."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ClusterError, ResourceError
from orchestrator.spec import Resources

AUTH_REMEDY = (
    "Ray token authentication refused the connection. Set RAY_AUTH_MODE=token in this shell (the token is "
    "read from ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), or start the cluster with "
    "RAY_AUTH_MODE=disabled."
)

# Set before a local Ray starts: an OOM-killed run is retried by the orchestrator (bounded, with backoff),
# never by Ray's default of infinite OOM retries.
# Workers inherit the rest: quiet model loading (no progress bars per load) and no tokenizer threads.
RAY_ENV_DEFAULTS = {
    "RAY_task_oom_retries": "0",
    "RAY_DEDUP_LOGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def connect(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
            resources: dict[str, float] | None = None) -> bool:
    """Attach to the cluster at `address` / RAY_ADDRESS, or start a local Ray that listens on loopback only.

    Returns True when this call started Ray (the caller shuts it down), False when Ray was already up.
    """
    import ray

    if ray.is_initialized():
        return False
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # "local" always starts a fresh Ray (a bare ray.init() would attach to any `ray start` cluster).
        kwargs: dict[str, Any] = {"address": "local", "logging_level": logging.WARNING, "include_dashboard": False,
                                  "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources}
    elif any(v is not None for v in (num_cpus, num_gpus, resources)):
        raise ClusterError("--num-cpus/--num-gpus describe a local Ray; they cannot be set when attaching to a cluster")
    else:
        kwargs = {"address": address, "logging_level": logging.WARNING}
    try:
        if address is None:
            with _loopback_node_ip():
                ray.init(**kwargs)
        else:
            ray.init(**kwargs)
    except Exception as exc:  # Ray raises many types here; all mean "no cluster"
        text = f"{type(exc).__name__}: {exc}"
        if "auth" in text.lower() or (address and os.environ.get("RAY_AUTH_MODE") != "token"):
            raise ClusterError(f"cannot connect to Ray at {address}: {text.splitlines()[0]}\n{AUTH_REMEDY}") from None
        raise ClusterError(f"cannot start or reach Ray ({address or 'local'}): {text.splitlines()[0]}") from None
    return True


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """While a local Ray starts, give its node the loopback IP, so that every component listens on loopback.

    Ray 2.60 binds the gRPC servers of the GCS, the raylet (node and object manager) and every worker, the
    dashboard and runtime-env agents and the metrics servers to loopback only when the node IP is what Ray
    calls localhost (127.0.0.1, ::1); with any other node IP, 127.0.0.2 included, the gRPC servers listen on
    every interface and the agents on the node IP. But `ray.init(_node_ip_address="127.0.0.1")` (and `ray
    start --node-ip-address=127.0.0.1`) rewrite 127.0.0.1 to the external address unless `ENABLE_RAY_CLUSTER`
    is off. That flag is the environment variable RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once when `ray`
    is imported (often before `connect()` runs), so the flag itself is switched off during the start and
    then restored.
    """
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def shutdown() -> None:
    import ray

    ray.shutdown()


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    resources: dict[str, float]


def alive_nodes() -> list[NodeInfo]:
    import ray

    return [NodeInfo(n["NodeID"], dict(n["Resources"])) for n in ray.nodes() if n.get("Alive")]


def requirements(resources: Resources) -> dict[str, float]:
    """The Ray resource names one run reserves."""
    needed = {"CPU": resources.num_cpus, "GPU": resources.num_gpus}
    if resources.memory:
        needed["memory"] = float(int(resources.memory))
    if resources.accelerator_type:
        needed[f"accelerator_type:{resources.accelerator_type}"] = 0.001
    needed.update(resources.custom)
    return {k: v for k, v in needed.items() if v > 0}


def slots_on(node: NodeInfo, needed: dict[str, float]) -> int:
    """How many runs needing `needed` fit on a node at once (0 if none)."""
    if not needed:
        return int(node.resources.get("CPU", 1)) or 1
    counts = []
    for name, amount in needed.items():
        have = node.resources.get(name, 0.0)
        if name.startswith("accelerator_type:"):
            counts.append(math.inf if have > 0 else 0)
        else:
            counts.append(math.floor(have / amount + 1e-9))
    return int(min(counts)) if min(counts) != math.inf else int(node.resources.get("CPU", 1)) or 1


def capacity(resources: Resources, nodes: list[NodeInfo] | None = None) -> int:
    """Runs of this shape the cluster can hold at once."""
    nodes = alive_nodes() if nodes is None else nodes
    return sum(slots_on(node, requirements(resources)) for node in nodes)


def check_feasible(stage: str, resources: Resources, nodes: list[NodeInfo] | None = None) -> None:
    """Refuse a stage no node can run: Ray would leave it pending forever."""
    nodes = alive_nodes() if nodes is None else nodes
    if any(slots_on(node, requirements(resources)) > 0 for node in nodes):
        return
    totals: dict[str, float] = {}
    for node in nodes:
        for name, amount in node.resources.items():
            if name in ("CPU", "GPU", "memory") or not name.startswith(("node:", "object_store")):
                totals[name] = totals.get(name, 0.0) + amount
    have = ", ".join(f"{k}={_fmt(k, v)}" for k, v in sorted(totals.items()) if not k.startswith("node:"))
    largest = ", ".join(
        f"{k}={_fmt(k, max(n.resources.get(k, 0.0) for n in nodes) if nodes else 0)}"
        for k in requirements(resources)
    )
    raise ResourceError(
        f"stage '{stage}' asks for {resources.describe()} per run, which no node can provide "
        f"(largest node: {largest}; cluster: {have}). Lower the stage's `resources`, or for a local "
        "Ray declare logical GPUs/CPUs with --num-gpus/--num-cpus."
    )


def _fmt(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / 2**30:.1f}GiB"
    return f"{value:g}"
