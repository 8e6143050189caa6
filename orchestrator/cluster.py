"""Connecting to Ray (local or a cluster, the same way under `ray job submit`) and checking resources."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import logfile
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
    # Ray's crash handler would turn a SIGTERM of the driver (kill, scancel, a time limit) into an abort;
    # without it the driver stops as on Ctrl-C, storing the rows of finished runs first.
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
    "RAY_DEDUP_LOGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_ray_environment() -> None:
    """The RAY_ENV_DEFAULTS (unless the user set them): call before `ray` is imported, which reads some."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def shipped_modules(targets: Iterable[str]) -> list[str]:
    """Local code a cluster's workers need for these task targets: the top-level package (or module
    file) of each one that is neither installed in the environment nor part of this project."""
    shipped: dict[str, None] = {}
    project = Path(__file__).resolve().parents[1]
    for target in targets:
        top = target.partition(":")[0].split(".")[0]
        module = sys.modules.get(top) or importlib.import_module(top)
        paths = list(getattr(module, "__path__", []))
        location = Path(paths[0]) if paths else Path(module.__file__ or "")
        location = location.resolve()
        installed = any(part in ("site-packages", "dist-packages") for part in location.parts)
        if not installed and location.parent != project and location.name:
            shipped[str(location)] = None
    return list(shipped)


def connect(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
            resources: dict[str, float] | None = None, task_targets: Iterable[str] = ()) -> bool:
    """Attach to the cluster at `address` / RAY_ADDRESS, or start a local Ray that listens on loopback only.

    On a cluster, the code of user tasks that are not installed there (a module on this machine's
    PYTHONPATH) is shipped to the workers with the job (Ray's `py_modules`); a local Ray's workers
    inherit the driver's environment. Returns True when this call started Ray (the caller shuts it
    down), False when Ray was already up.
    """
    import ray

    if ray.is_initialized():
        return False
    set_ray_environment()
    logfile.route_library_loggers()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # "local" always starts a fresh Ray (a bare ray.init() would attach to any `ray start` cluster).
        kwargs: dict[str, Any] = {"address": "local", "logging_level": logging.WARNING, "include_dashboard": False,
                                  "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources,
                                  "log_to_driver": logfile.forward_worker_output()}
    elif any(v is not None for v in (num_cpus, num_gpus, resources)):
        raise ClusterError("--num-cpus/--num-gpus describe a local Ray; they cannot be set when attaching to a cluster")
    else:
        kwargs = {"address": address, "logging_level": logging.WARNING,
                  "log_to_driver": logfile.forward_worker_output()}
        modules = shipped_modules(task_targets)
        if modules:
            kwargs["runtime_env"] = {"py_modules": modules}
    # ray.init replaces the SIGTERM handler with one that exits at once; the caller's (a clean stop) is kept.
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        if address is None:
            with _loopback_node_ip():
                ray.init(**kwargs)
        else:
            ray.init(**kwargs)
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        logfile.route_library_loggers()
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

    return [NodeInfo(n["NodeID"], dict(n["Resources"])) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]


def local_nodes(num_cpus: float | None = None, num_gpus: float | None = None) -> list[NodeInfo]:
    """The node a local Ray started with these options would have, by Ray's own resource detection,
    without starting it (so `plan` refuses what `run` would); [] where Ray is not installed."""
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec
    except ImportError:
        return []
    spec = ResourceAndLabelSpec(num_cpus=num_cpus, num_gpus=num_gpus).resolve(is_head=True)  # type: ignore[arg-type]
    resources = spec.to_resource_dict()  # type: ignore[no-untyped-call]
    return [NodeInfo("local", {k: float(v) for k, v in resources.items()})]


def fits_any_local_ray(resources: Resources) -> bool:
    """True when a run needs at most one CPU and nothing else: every local Ray started without
    --num-cpus has at least one CPU, so there is nothing to detect."""
    needed = requirements(resources)
    return set(needed) <= {"CPU"} and needed.get("CPU", 0.0) <= 1.0


def ray_options(resources: Resources) -> dict[str, Any]:
    """The `.options(...)` of a Ray task or actor that reserves `resources` (the one mapping)."""
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.memory:
        options["memory"] = int(resources.memory)
    if resources.accelerator_type:
        options["accelerator_type"] = resources.accelerator_type
    if resources.custom:
        options["resources"] = dict(resources.custom)
    return options


ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_AMOUNT = 0.001  # what Ray reserves of the `accelerator_type:X` node resource


def requirements(resources: Resources) -> dict[str, float]:
    """The node resources one run reserves, named as Ray names them (derived from `ray_options`)."""
    options = ray_options(resources)
    needed = {"CPU": float(options["num_cpus"]), "GPU": float(options["num_gpus"])}
    if "memory" in options:
        needed["memory"] = float(options["memory"])
    if "accelerator_type" in options:
        needed[ACCELERATOR_PREFIX + options["accelerator_type"]] = ACCELERATOR_AMOUNT
    needed.update(options.get("resources", {}))
    return {k: v for k, v in needed.items() if v > 0}


def slots_on(node: NodeInfo, needed: dict[str, float]) -> int:
    """How many runs needing `needed` fit on a node at once (0 if none)."""
    if not needed:
        return int(node.resources.get("CPU", 1)) or 1
    counts = []
    for name, amount in needed.items():
        have = node.resources.get(name, 0.0)
        if name.startswith(ACCELERATOR_PREFIX):
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
    if not nodes or any(slots_on(node, requirements(resources)) > 0 for node in nodes):
        return  # no nodes: nothing known to check against (Ray not installed)
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
