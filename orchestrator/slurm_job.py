"""What the `orchestrator slurm` batch script runs inside the job, besides Ray and the sweep.

    python -m orchestrator.slurm_job head-address
        prints "IP GCS_PORT CLIENT_PORT": this node's address other nodes can reach, and two free ports
    python -m orchestrator.slurm_job wait-for-nodes ADDRESS N [--timeout S] [--watch PID ...]
        waits until N Ray nodes are alive at ADDRESS; gives up early when a watched process (a `ray start`
        step) has exited
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.errors import ClusterError


def node_ip() -> str:
    """This node's IPv4 address as other nodes reach it: its hostname's, else that of its default route.

    Hostnames often resolve to 127.0.x.1 through /etc/hosts; a loopback address is the last resort.
    """
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # UDP: picks the outgoing interface, sends nothing
        candidates.append(str(probe.getsockname()[0]))
    usable = [c for c in candidates if not ipaddress.ip_address(c).is_loopback]
    return usable[0] if usable else "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on this node now (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for_nodes(address: str, expected: int, timeout_s: float, watch: Sequence[int] = (),
                   poll_s: float = 1.0) -> int:
    """Block until `expected` Ray nodes are alive at `address`; returns how many are.

    Raises ClusterError at the deadline, or as soon as a watched process has exited.
    """
    from orchestrator import cluster

    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s

    def check_time(what: str) -> None:
        dead = [pid for pid in watch if not _alive(pid)]
        if dead:
            raise ClusterError(f"waiting for {what}: `ray start` (pid {dead[0]}) exited; see its output above")
        if time.monotonic() > deadline:
            raise ClusterError(f"waiting for {what}: gave up after {timeout_s:g} s")
        time.sleep(poll_s)

    while True:  # the head's port first: connecting before it listens would wait out Ray's own timeouts
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            check_time(f"the Ray head at {address}")
    cluster.connect(address)
    try:
        while True:
            nodes = cluster.alive_nodes()
            if len(nodes) >= expected:
                cpus = sum(n.resources.get("CPU", 0.0) for n in nodes)
                gpus = sum(n.resources.get("GPU", 0.0) for n in nodes)
                print(f"orchestrator slurm: {len(nodes)} Ray node(s) up at {address}: {cpus:g} CPUs, {gpus:g} GPUs",
                      flush=True)
                return len(nodes)
            check_time(f"{expected} Ray nodes at {address} ({len(nodes)} joined)")
    finally:
        cluster.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.slurm_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("head-address")
    wait = commands.add_parser("wait-for-nodes")
    wait.add_argument("address")
    wait.add_argument("expected", type=int)
    wait.add_argument("--timeout", type=float, default=600.0)
    wait.add_argument("--watch", type=int, nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.command == "head-address":
        print(node_ip(), *free_ports(2))
        return 0
    try:
        wait_for_nodes(args.address, args.expected, args.timeout, args.watch)
    except ClusterError as exc:
        print(f"orchestrator slurm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
