"""A full or read-only results root: exit 2 with the path and the OS error, nothing stored lost, clean resume."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.store import load_results

REPO = Path(__file__).resolve().parents[2]
SPEC = "name: disk\nstages:\n  s: {task: demo.quadratic, params: {x: {range: [0, 100]}}}\n"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root and mount rights, as on the project's machines and CI)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def orchestrator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def fill(disk: Path) -> Path:
    """Leave no free space on `disk`: one filler file, returned so the test can free the space again."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_exits_2_keeps_stored_runs_and_resumes(small_disk: Path, tmp_path: Path) -> None:
    # Invariant: writing into a full results root exits 2 naming the path and "No space left", with no
    # traceback and no visible half-written part; earlier rows are intact; once space is freed, resume
    # stores every run exactly once.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    results = small_disk / "r"
    first = orchestrator("run", str(spec), "--results", str(results), "--executor", "inline", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    filler = fill(small_disk)
    full = orchestrator("run", str(spec), "x={range: [0, 300]}", "--results", str(results), "--executor", "inline",
                        cwd=tmp_path)
    message = full.stderr.replace("\n", " ")
    assert full.returncode == 2, full.stderr
    assert "No space left on device" in message and str(results / "disk" / "s") in message
    assert "Traceback" not in full.stderr
    stage = results / "disk" / "s"
    assert not list(stage.glob(".tmp-*"))
    for part in stage.glob("part-*.parquet"):
        pq.read_metadata(part)
    assert len(load_results(str(results), "disk", "s")) == 100  # nothing stored before is lost
    filler.unlink()
    resumed = orchestrator("run", str(spec), "x={range: [0, 300]}", "--results", str(results), "--executor",
                           "inline", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = load_results(str(results), "disk", "s", latest=False)
    assert len(after) == 300 and after.run_id.is_unique


def test_read_only_results_root_exits_2(small_disk: Path, tmp_path: Path) -> None:
    # Invariant: a read-only results root exits 2 naming the path and the OS error, without a traceback.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    results = small_disk / "r"
    assert orchestrator("run", str(spec), "--results", str(results), "--executor", "inline",
                        cwd=tmp_path).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    refused = orchestrator("run", str(spec), "x={range: [0, 200]}", "--results", str(results), "--executor", "inline",
                           cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "Read-only file system" in refused.stderr.replace("\n", " ") and "Traceback" not in refused.stderr
    assert len(load_results(str(results), "disk", "s")) == 100
