"""Helpers shared by the integration tests (not fixtures)."""

from __future__ import annotations

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
