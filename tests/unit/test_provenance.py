"""Provenance: the commit a row ran from and whether the task's code differed from it (a real git checkout)."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import pytest

from orchestrator.provenance import CodeState, code_state


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def lab_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed checkout holding the package `provlab` (on sys.path) and a README beside it."""
    repo = tmp_path / "lab"
    (repo / "provlab").mkdir(parents=True)
    (repo / "provlab" / "__init__.py").write_text("")
    (repo / "provlab" / "probe.py").write_text("VALUE = 1\n")
    (repo / "README.md").write_text("lab\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lab")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.delenv("ORCHESTRATOR_GIT_COMMIT", raising=False)
    importlib.invalidate_caches()
    code_state.cache_clear()
    return repo


def test_a_clean_checkout_is_not_dirty(lab_repo: Path) -> None:
    state = code_state("provlab.probe:probe")
    assert state == CodeState(_git(lab_repo, "rev-parse", "HEAD"), False)


def test_an_untracked_module_in_the_task_package_is_dirty(lab_repo: Path) -> None:
    # The reported case: a new, uncommitted task module produced the rows; git_commit alone would hide it.
    (lab_repo / "provlab" / "new_task.py").write_text("def f(): ...\n")
    assert code_state("provlab.new_task:f").dirty is True


def test_an_untracked_file_outside_the_task_package_is_not_dirty(lab_repo: Path) -> None:
    (lab_repo / "notes.txt").write_text("scratch\n")
    assert code_state("provlab.probe:probe").dirty is False


def test_a_changed_tracked_file_is_dirty(lab_repo: Path) -> None:
    (lab_repo / "README.md").write_text("changed\n")
    assert code_state("provlab.probe:probe").dirty is True


def test_the_submitting_side_wins_under_a_job(lab_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_GIT_COMMIT", "abc123")
    monkeypatch.setenv("ORCHESTRATOR_GIT_DIRTY", "true")
    assert code_state("provlab.probe:probe") == CodeState("abc123", True)
    code_state.cache_clear()
