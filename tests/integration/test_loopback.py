"""A local Ray started by the orchestrator listens on loopback addresses only, with token auth on."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # its own Ray start: 15-40 s on 2 shared cores

# Runs in its own process, so it starts its own Ray (never the test session's). `ray` is imported first on
# purpose: `connect()` must keep Ray on loopback whatever was imported before it.
SCRIPT = textwrap.dedent("""
    import json, os, urllib.error, urllib.request
    import psutil
    import ray
    from orchestrator import cluster

    assert cluster.connect(num_cpus=2)

    @ray.remote
    def square(i):
        return i * i

    assert ray.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    me = psutil.Process()
    processes = {p.pid: p for p in me.children(recursive=True)}
    processes[me.pid] = me
    for p in psutil.process_iter(["cmdline"]):
        if session in " ".join(p.info["cmdline"] or []):
            processes[p.pid] = p
    listening = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in processes:
            command = "driver" if conn.pid == me.pid else " ".join(processes[conn.pid].cmdline())
            listening.append({"ip": conn.laddr.ip, "port": conn.laddr.port, "command": command})
    unauthenticated = []
    for entry in listening:
        if "RuntimeEnvAgent" in entry["command"]:
            host = entry["ip"] if entry["ip"] not in ("0.0.0.0", "::") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{entry['port']}/get_runtime_envs_info"
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=30)
                unauthenticated.append(200)
            except urllib.error.HTTPError as exc:
                unauthenticated.append(exc.code)
    print(json.dumps({"listening": listening, "node_ips": [n["NodeManagerAddress"] for n in ray.nodes()],
                      "node_resources": [k for k in ray.cluster_resources() if k.startswith("node:")],
                      "unauthenticated": unauthenticated}))
    cluster.shutdown()
""")

COMPONENTS = {  # what a listening process is, by its command line
    "gcs_server": "GCS",
    "raylet/raylet": "raylet",
    "ray::DashboardAgent": "dashboard agent",
    "ray::RuntimeEnvAgent": "runtime-env agent",
    "dashboard/dashboard.py": "dashboard (metrics)",
    "autoscaler/_private/monitor.py": "autoscaler monitor (metrics)",
    "ray::": "worker",
    "driver": "driver",
}


def component(command: str) -> str:
    return next((name for marker, name in COMPONENTS.items() if marker in command), command)


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    # Invariant: every listening socket of a local Ray that `cluster.connect()` started (GCS, raylet, workers,
    # the driver, dashboard agent, runtime-env agent, metrics servers) is on loopback, the node is known by
    # 127.0.0.1, and token auth still refuses a request without the token. No component is exempt.
    env = {**os.environ, "PYTHONPATH": str(REPO),
           # Fixed default ports (44227, 44217) may be held by another Ray on a shared machine, and then these
           # metrics servers would not listen at all: free ports make them listen, so they are checked too.
           "DASHBOARD_METRIC_PORT": str(free_port()), "AUTOSCALER_METRIC_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    exposed = [f"{component(s['command'])} on {s['ip']}:{s['port']}" for s in report["listening"]
               if not is_loopback(s["ip"])]
    assert exposed == []
    assert {component(s["command"]) for s in report["listening"]} >= set(COMPONENTS.values())
    assert report["node_ips"] == ["127.0.0.1"] and "node:127.0.0.1" in report["node_resources"]
    assert report["unauthenticated"] == [401]
