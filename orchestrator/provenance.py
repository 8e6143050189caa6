"""Provenance stored with every row: code version, package versions, spec hash."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from functools import cache
from importlib import metadata

KEY_PACKAGES = ("interp-sweeps", "ray", "torch", "transformers", "numpy", "pyarrow", "optuna", "captum", "peft")


@cache
def git_commit(directory: str | None = None) -> str | None:
    """HEAD of the git checkout we run from (`ORCHESTRATOR_GIT_COMMIT` wins, e.g. under `ray job submit`)."""
    if os.environ.get("ORCHESTRATOR_GIT_COMMIT"):
        return os.environ["ORCHESTRATOR_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return f"{commit}-dirty" if dirty else commit


@cache
def package_versions() -> str:
    """JSON of the installed versions of the packages that decide results."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return json.dumps(versions, sort_keys=True)


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
