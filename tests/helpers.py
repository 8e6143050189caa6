"""Helpers shared by the integration tests (not fixtures)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def executing_workers() -> list[psutil.Process]:
    """Ray worker processes executing a chunk of runs right now (their process title says so)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if " ".join(proc.info["cmdline"] or []).startswith("ray::_run_chunk"):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2) -> Iterator[tuple[int, int]]:
    """A `ray start --head` cluster on 127.0.0.1 for the block: (GCS port, dashboard port)."""
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={free_port()}"],  # the default port clashes with any other Ray here
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        yield port, dashboard
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_job(dashboard: int, env: dict[str, str], entrypoint: list[str]) -> subprocess.CompletedProcess[str]:
    """`ray job submit --working-dir <repo> -- entrypoint`, retried while the head's job server starts."""
    submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir",
              str(REPO), "--runtime-env-json", json.dumps({"excludes": ["results/", ".venv/"]}), "--", *entrypoint]
    deadline = time.time() + 180
    while True:
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
        if job.returncode == 0 or time.time() > deadline:
            return job
        time.sleep(2)


def driver_with_stored_rows(spec: Path, results: Path, stage_dir: Path, cwd: Path) -> subprocess.Popen[str]:
    """`orchestrator run` in its own session, returned once its first part is stored (still running)."""
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(results),
                               "--num-cpus", "2"], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None and not list(stage_dir.glob("part-*")):
        time.sleep(0.05)
    assert driver.poll() is None, driver.communicate()
    return driver
