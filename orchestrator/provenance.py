"""Provenance stored with every row: code version (commit, dirty), package versions, spec hash."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata

KEY_PACKAGES = ("interp-sweeps", "ray", "torch", "transformers", "numpy", "pyarrow", "optuna", "captum", "peft")


@dataclass(frozen=True)
class CodeState:
    """The code that produced a row: the git commit it ran from and whether it differed from that commit."""

    commit: str | None
    dirty: bool | None  # None: not in a git checkout


def _git(args: list[str], cwd: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def task_package_path(target: str) -> str:
    """The file or directory of the top-level package a task target (`module:function`) lives in."""
    package = target.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return str(next(iter(spec.submodule_search_locations)))
    if spec is not None and spec.origin:
        return spec.origin
    return os.getcwd()


@cache
def code_state(target: str) -> CodeState:
    """Commit and dirtiness of the checkout holding the task `target`'s package.

    Dirty: a tracked file of the checkout changed, or an untracked file exists under the task's package
    (a new task module that is not committed). `ORCHESTRATOR_GIT_COMMIT` / `ORCHESTRATOR_GIT_DIRTY` win:
    under `ray job submit` the working directory is uploaded without `.git`, so the submitting side
    passes them (see README).
    """
    if os.environ.get("ORCHESTRATOR_GIT_COMMIT"):
        flag = os.environ.get("ORCHESTRATOR_GIT_DIRTY", "").strip().lower()
        return CodeState(os.environ["ORCHESTRATOR_GIT_COMMIT"], flag in ("1", "true", "yes") if flag else None)
    return checkout_state(task_package_path(target))


def checkout_state(path: str) -> CodeState:
    """Commit of the checkout holding `path`; dirty if a tracked file changed or an untracked (not ignored)
    file exists under `path`."""
    where = path if os.path.isdir(path) else os.path.dirname(path)
    commit = _git(["rev-parse", "HEAD"], where)
    if not commit:
        return CodeState(None, None)
    tracked = _git(["status", "--porcelain", "--untracked-files=no"], where)
    untracked = _git(["status", "--porcelain", "--untracked-files=all", "--", path], where)
    return CodeState(commit, bool(tracked) or any(line.startswith("??") for line in (untracked or "").splitlines()))


def job_runtime_env(directory: str) -> dict[str, object]:
    """The `ray job submit --runtime-env-json` for a sweep submitted from the checkout at `directory`: the
    commit and dirtiness the job's rows record (the uploaded working directory has no usable git), and the
    local virtual environment and results left out of the upload."""
    state = checkout_state(os.path.abspath(directory))
    env_vars = {"ORCHESTRATOR_GIT_COMMIT": state.commit or "", "ORCHESTRATOR_GIT_DIRTY": str(bool(state.dirty)).lower()}
    return {"excludes": [".venv/", "results/", ".git/"], "env_vars": env_vars if state.commit else {}}


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
