"""The Parquet store on a local path and on a non-local pyarrow filesystem (no Ray)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow.fs as pafs
import pytest

from orchestrator.store import ResultStore, load_results


def memory_store(tmp_path: Path) -> ResultStore:
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    return ResultStore(f"/bucket-{tmp_path.name}", "sweep", filesystem=fs)


def rows(run_id: str, attempt: int, status: str, n: int = 2) -> list[dict]:
    return [{"run_id": run_id, "attempt": attempt, "status": status, "value": i} for i in range(n)]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_latest_attempt_wins_and_history_is_kept(kind: str, tmp_path: Path) -> None:
    # Invariant: readers see each run's latest attempt; earlier attempts stay in the files.
    store = ResultStore(str(tmp_path), "sweep") if kind == "local" else memory_store(tmp_path)
    store.write_rows("s", rows("a", 1, "failed", 1) + rows("b", 1, "ok"))
    store.write_rows("s", rows("a", 2, "ok"))
    latest = store.read_stage("s").to_pylist()
    assert sorted((r["run_id"], r["attempt"]) for r in latest) == [("a", 2), ("a", 2), ("b", 1), ("b", 1)]
    assert store.read_stage("s", latest=False).num_rows == 5
    states = store.run_states("s")
    assert (states["a"].status, states["a"].attempt) == ("ok", 2)
    assert store.stages() == ["s"]


def test_artifacts_round_trip_through_a_remote_filesystem(tmp_path: Path) -> None:
    # Invariant: artifacts published to a non-local store come back intact for downstream runs.
    store = memory_store(tmp_path)
    source = tmp_path / "made"
    source.mkdir()
    (source / "vector.npy").write_bytes(b"123")
    store.publish_artifacts("run1", source)
    fetched = store.fetch_artifacts("run1", tmp_path / "cache")
    assert (fetched / "vector.npy").read_bytes() == b"123"
    assert store.local_artifact_dir("run1") is None


def test_file_uri_is_local_and_load_results(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}", "sweep")
    assert store.is_local
    store.write_rows("s", rows("a", 1, "ok"))
    assert len(load_results(str(tmp_path), "sweep", "s")) == 2


def test_null_only_columns_keep_their_types(tmp_path: Path) -> None:
    # Invariant: a batch where error columns are all null still concatenates with one that has errors.
    store = ResultStore(str(tmp_path), "sweep")
    store.write_rows("s", [{"run_id": "a", "attempt": 1, "status": "ok", "error": None, "error_type": None}])
    store.write_rows("s", [{"run_id": "b", "attempt": 1, "status": "failed", "error": "boom", "error_type": "x"}])
    assert store.read_stage("s").num_rows == 2


def test_duckdb_reads_the_parts(tmp_path: Path) -> None:
    # Invariant: the stored parts are plain Parquet that DuckDB queries directly, even as schemas drift.
    duckdb = pytest.importorskip("duckdb")
    store = ResultStore(str(tmp_path), "sweep")
    store.write_rows("s", rows("a", 1, "ok"))
    store.write_rows("s", [{"run_id": "b", "attempt": 1, "status": "ok", "value": 5, "extra": "new column"}])
    glob = f"{tmp_path}/sweep/s/part-*.parquet"
    ((count, total, extras),) = duckdb.sql(
        f"SELECT count(*), sum(value), count(extra) FROM read_parquet('{glob}', union_by_name=true)"
    ).fetchall()
    assert (count, total, extras) == (3, 6, 1)


def test_columns_missing_from_the_first_row_are_kept(tmp_path: Path) -> None:
    # Invariant: a column that only later rows have (an aggregate row's metrics) is stored, not dropped.
    store = ResultStore(str(tmp_path), "sweep")
    store.write_rows("s", [{"run_id": "a", "attempt": 1, "status": "ok", "example": 1},
                           {"run_id": "a", "attempt": 1, "status": "ok", "success": 0.5, "mixed": "x"},
                           {"run_id": "a", "attempt": 1, "status": "ok", "mixed": 3}])
    table = store.read_stage("s")
    assert table.column("success").to_pylist() == [None, 0.5, None]
    assert table.column("mixed").to_pylist() == [None, '"x"', "3"]
