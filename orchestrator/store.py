"""Parquet result store; it owns every path under the results root.

    <root>/<sweep>/<stage>/part-*.parquet    rows, one atomic part per flush
    <root>/<sweep>/<stage>/best.parquet      a tune stage's selected config per group
    <root>/<sweep>/<stage>/steps/part-*.parquet   `ctx.report` rows (run_id, attempt, step, reported_at,
                                             metrics): apart from the result rows, so "which runs are
                                             done", `status` and `best.parquet` never see a step
    <root>/<sweep>/artifacts/<run_id>/       files a run kept (arrays, weights)
    <root>/<sweep>/report/                   figures written by `report`
    <root>/<sweep>/tracking/                 TensorBoard and W&B files of `run --track`, `export --to`
    <root>/<sweep>/.lock                     held by the one driver running the sweep

- Each part is written under a hidden temporary name, then renamed: no half-written file is ever visible.
- What is finished is read from the data itself (no side database to drift out of sync).
- A run may have several attempts (failure, then `retry`); readers see the latest, history is kept.
- The root is a local path or any `pyarrow.fs` URI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.errors import StoreError
from orchestrator.schema import COLUMN_TYPES, arrow_kind, merged_kind
from orchestrator.spec import RESERVED_STAGE_NAMES

PART_PREFIX = "part-"
PART_NAME = re.compile(r"^part-\d{20}-[0-9a-f]{8}\.parquet$")  # the only files read as data
QUARANTINE = "_quarantine"
BEST_FILE = "best.parquet"
# The store's folders beside the stages (no stage takes these names): run artifacts, report figures, the
# resolved spec of every `run` (`remember_spec`), the log of what the terminal does not show, and the
# TensorBoard and W&B files of experiment tracking.
ARTIFACTS, REPORT, SPECS, LOGS, TRACKING = RESERVED_STAGE_NAMES
LATEST_SPEC = "latest.json"
STEPS = "steps"  # a stage's folder of step rows


def _filesystem(root: str) -> tuple[pafs.FileSystem, str, bool]:
    if "://" in root and not root.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/"), False
    local = os.path.abspath(root.removeprefix("file://"))
    return pafs.LocalFileSystem(), local, True


@dataclass(frozen=True)
class RunState:
    """The latest stored attempt of a run."""

    status: str
    attempt: int


def _to_table(rows: list[dict[str, Any]]) -> pa.Table:
    table = _infer_table(rows)
    for i, name in enumerate(table.column_names):
        if name in COLUMN_TYPES and table.schema.field(i).type != COLUMN_TYPES[name]:
            table = table.set_column(i, name, table.column(i).cast(COLUMN_TYPES[name]))
    return table


def _infer_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A table of every column any row has (rows missing a column hold null there)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    arrays = {}
    for name in columns:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # mixed types in one column (an int here, a string there): store that column as JSON text
            arrays[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    return pa.table(arrays)


class ResultStore:
    """Reads and writes one sweep's results."""

    def __init__(self, root: str | os.PathLike[str], sweep: str, filesystem: pafs.FileSystem | None = None) -> None:
        """`root`: a local path or a `pyarrow.fs` URI; or a path inside `filesystem` when one is given."""
        self.root = str(root)
        self.sweep = sweep
        if filesystem is not None:
            self.fs, base, self.is_local = filesystem, self.root.rstrip("/"), False
        else:
            self.fs, base, self.is_local = _filesystem(self.root)
            if self.is_local:
                self.root = base  # absolute: workers run in other directories
        self.base = f"{base}/{sweep}"
        self.quarantine = False  # move unreadable parts aside: only `run`, under the sweep's lock, turns it on

    # -- paths
    def stage_dir(self, stage: str) -> str:
        return f"{self.base}/{stage}"

    def artifact_root(self) -> str | None:
        """The local directory workers publish artifacts into, or None for a remote store."""
        return f"{self.base}/{ARTIFACTS}" if self.is_local else None

    def artifact_dir(self, run_id: str) -> str:
        return f"{self.base}/{ARTIFACTS}/{run_id}"

    def steps_dir(self, stage: str) -> str:
        return f"{self.stage_dir(stage)}/{STEPS}"

    def best_path(self, stage: str) -> str:
        return f"{self.stage_dir(stage)}/{BEST_FILE}"

    def report_dir(self) -> Path:
        return Path(self.base) / REPORT

    def tracking_dir(self) -> Path | None:
        """Where file-based trackers (TensorBoard, W&B) write, or None for a remote store."""
        return Path(self.base) / TRACKING if self.is_local else None

    def log_dir(self) -> Path:
        """Local directory of the command logs (Ray's and libraries' warnings; a remote store logs locally)."""
        return Path(self.base if self.is_local else Path(tempfile.gettempdir()) / f"sweep-{self.sweep}") / LOGS

    def scratch_dir(self) -> Path:
        """A fresh local directory for one command (fetched upstream artifacts of a remote store)."""
        return Path(tempfile.mkdtemp(prefix=f"sweep-{self.sweep}-"))

    # -- writing
    def write_rows(self, stage: str, rows: list[dict[str, Any]]) -> str | None:
        """Write one part atomically; returns its path."""
        if not rows:
            return None
        return self.write_table(stage, _to_table(rows))

    def write_steps(self, stage: str, rows: list[dict[str, Any]]) -> str | None:
        """Write one part of step rows (from `ctx.report`) atomically; returns its path."""
        if not rows:
            return None
        rows = [{**r, "reported_at": datetime.fromtimestamp(r["reported_at"], tz=timezone.utc)} for r in rows]
        table = _to_table(rows)
        for name, kind in (("attempt", pa.int64()), ("step", pa.int64())):
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(kind))
        return self.write_table(stage, table, directory=self.steps_dir(stage))

    def write_table(self, stage: str, table: pa.Table, name: str | None = None, directory: str | None = None) -> str:
        """Write `table` under a temporary name, then rename it into place: readers never see half a file.

        A full or read-only results root is a StoreError naming the path and the OS error; the temporary
        file is removed, and nothing stored before is touched.
        """
        directory = directory or self.stage_dir(stage)
        final = f"{directory}/{name or f'{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet'}"
        temporary = f"{directory}/.tmp-{uuid.uuid4().hex}.parquet"
        try:
            self.fs.create_dir(directory, recursive=True)
            with self.fs.open_output_stream(temporary) as stream:
                pq.write_table(table, stream, compression="zstd")
            self.fs.move(temporary, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.delete_file(temporary)
            raise StoreError(f"{final}: cannot write results: {exc}; the runs stored before are kept. Free "
                             "space or fix the permissions, then run the same command to resume") from None
        return final

    def remove_stale_temporaries(self) -> int:
        """Delete half-written parts a killed driver left (call only while holding the sweep's lock)."""
        removed = 0
        for directory in [d for stage in self.stages() for d in (self.stage_dir(stage), self.steps_dir(stage))]:
            selector = pafs.FileSelector(directory, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
                    try:
                        self.fs.delete_file(info.path)
                    except OSError as exc:
                        raise StoreError(f"{info.path}: cannot remove a half-written part: {exc}") from None
                    removed += 1
        return removed

    # -- reading
    def part_files(self, stage: str, directory: str | None = None) -> list[str]:
        selector = pafs.FileSelector(directory or self.stage_dir(stage), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        names = [i.path for i in infos if i.type == pafs.FileType.File and PART_NAME.match(i.base_name)]
        return sorted(names)

    def stages(self) -> list[str]:
        selector = pafs.FileSelector(self.base, allow_not_found=True)
        return sorted(
            i.base_name
            for i in self.fs.get_file_info(selector)
            if i.type == pafs.FileType.Directory and i.base_name not in RESERVED_STAGE_NAMES
            and not i.base_name.startswith(".")
        )

    def _quarantine(self, path: str, reason: str) -> None:
        directory = f"{path.rsplit('/', 1)[0]}/{QUARANTINE}"
        self.fs.create_dir(directory, recursive=True)
        target = f"{directory}/{path.rsplit('/', 1)[1]}"
        self.fs.move(path, target)
        warnings.warn(f"{path}: unreadable results file moved to {target} ({reason}); its runs will be recomputed",
                      stacklevel=3)

    def _read_parts(self, stage: str, columns: list[str] | None, directory: str | None = None) -> list[pa.Table]:
        tables = []
        for path in self.part_files(stage, directory):
            try:
                with self.fs.open_input_file(path) as handle:
                    parquet = pq.ParquetFile(handle)
                    names = parquet.schema_arrow.names
                    required = ("run_id", "status") if directory is None else ("run_id", "step")
                    if not all(name in names for name in required):
                        warnings.warn(f"{path}: not a results file of this tool (no {'/'.join(required)}); "
                                      "ignored", stacklevel=3)
                        continue
                    wanted = [c for c in columns if c in names] if columns else None
                    tables.append(parquet.read(columns=wanted))
            except (pa.ArrowInvalid, OSError) as exc:
                reason = str(exc).splitlines()[0]
                if self.quarantine:
                    self._quarantine(path, reason)
                else:
                    warnings.warn(f"{path}: unreadable results file skipped ({reason}); `run` moves it aside and "
                                  "recomputes its runs", stacklevel=3)
        return tables

    def read_stage(self, stage: str, columns: list[str] | None = None, latest: bool = True) -> pa.Table:
        """All rows of a stage (only the latest attempt of each run unless `latest=False`)."""
        if columns is not None:
            columns = list(dict.fromkeys([*columns, "run_id", "attempt"]))
        tables = self._read_parts(stage, columns)
        if not tables:
            return pa.table({"run_id": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                             "attempt": pa.array([], pa.int64())})
        table = _concat(tables)
        if latest and table.num_rows:
            table = latest_attempts(table)
        return table

    def step_rows(self, stage: str, latest: bool = True) -> pa.Table:
        """Every `ctx.report` row of a stage: `run_id`, `attempt`, `step`, `reported_at` (UTC) and the
        reported metrics, in the order they were stored (join to `read_stage` on `run_id` for params).

        With `latest`, only each run's latest attempt that reported (a retried run's earlier curve is
        history). A run stopped by a scheduler, or killed, keeps the steps it reported.
        """
        tables = self._read_parts(stage, None, self.steps_dir(stage))
        if not tables:
            return pa.table({name: pa.array([], kind) for name, kind in (
                ("run_id", pa.string()), ("attempt", pa.int64()), ("step", pa.int64()),
                ("reported_at", pa.timestamp("us", tz="UTC")))})
        table = _concat(tables)
        return latest_attempts(table) if latest and table.num_rows else table

    def column_kinds(self, stage: str) -> dict[str, str | None]:
        """The kind (int, float, string, ...) of every column stored for a stage, from the parts' schemas."""
        kinds: dict[str, str | None] = {}
        for path in self.part_files(stage):
            try:
                with self.fs.open_input_file(path) as handle:
                    schema = pq.read_schema(handle)
            except (pa.ArrowInvalid, OSError):
                continue  # unreadable parts are reported (and quarantined by `run`) when the stage is read
            for field in schema:
                merged = merged_kind(kinds.get(field.name), arrow_kind(field.type))
                kinds[field.name] = merged if merged != "" else "string"  # a stage mixed before the checks
        return kinds

    def stage_tasks(self, stage: str) -> set[str]:
        """The task names a stage's stored rows were computed by."""
        table = self.read_stage(stage, columns=["task"], latest=False)
        return set(table.column("task").to_pylist()) - {None} if "task" in table.column_names else set()

    def run_states(self, stage: str) -> dict[str, RunState]:
        """run_id -> status and attempt of the latest stored attempt."""
        if not self.part_files(stage):
            return {}  # no table built: building one imports pandas (pyarrow does), half a second of `plan`
        table = self.read_stage(stage, columns=["run_id", "status", "attempt"], latest=False)
        states: dict[str, RunState] = {}
        for run_id, status, attempt in zip(
            table.column("run_id").to_pylist(), table.column("status").to_pylist(), table.column("attempt").to_pylist(),
            strict=True,
        ):
            known = states.get(run_id)
            if known is None or attempt > known.attempt:
                states[run_id] = RunState(status, attempt)
        return states

    def best_rows(self, stage: str) -> list[dict[str, Any]]:
        """A tune stage's `best.parquet` rows ([] before its selection ran)."""
        path = self.best_path(stage)
        if not self.fs.get_file_info(path).is_file:
            return []
        with self.fs.open_input_file(path) as handle:
            rows: list[dict[str, Any]] = pq.read_table(handle).to_pylist()
        return rows

    def write_best(self, stage: str, rows: list[dict[str, Any]]) -> None:
        self.write_table(stage, pa.Table.from_pylist(rows), name=BEST_FILE)

    # -- remembered specs
    def remember_spec(self, record: dict[str, Any]) -> str:
        """Save a `run`'s resolved spec record as `specs/<fingerprint>.json` and as `specs/latest.json`."""
        text = json.dumps(record, indent=1, sort_keys=True, default=str)
        directory = f"{self.base}/{SPECS}"
        path = f"{directory}/{record['fingerprint']}.json"
        try:
            self.fs.create_dir(directory, recursive=True)
            for name in (path, f"{directory}/{LATEST_SPEC}"):
                temporary = f"{directory}/.tmp-{uuid.uuid4().hex}.json"
                with self.fs.open_output_stream(temporary) as stream:
                    stream.write(text.encode())
                self.fs.move(temporary, name)
        except OSError as exc:
            raise StoreError(f"{path}: cannot save the resolved spec: {exc}") from None
        return path

    def latest_spec(self) -> dict[str, Any] | None:
        """The record the latest `run` saved (None before any run, or if it cannot be read)."""
        path = f"{self.base}/{SPECS}/{LATEST_SPEC}"
        try:
            with self.fs.open_input_stream(path) as stream:
                record: dict[str, Any] = json.loads(stream.read().decode())
        except (OSError, ValueError):
            return None
        return record

    # -- artifacts
    def local_artifact_dir(self, run_id: str) -> Path | None:
        """The artifact directory as a local path (local roots only)."""
        return Path(self.artifact_dir(run_id)) if self.is_local else None

    def publish_artifacts(self, run_id: str, source: Path) -> None:
        """Move a finished run's artifact directory into place (replacing an earlier attempt's)."""
        if not any(source.iterdir()):
            return
        target = self.artifact_dir(run_id)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            if Path(target).exists():
                shutil.rmtree(target)
            os.replace(source, target)
        else:
            pafs.copy_files(str(source), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def fetch_artifacts(self, run_id: str, cache: Path) -> Path:
        """A local directory holding a run's artifacts (the store itself when local)."""
        local = self.local_artifact_dir(run_id)
        if local is not None:
            if not local.is_dir():
                raise FileNotFoundError(f"artifacts of run {run_id} are missing: {local}")
            return local
        target = cache / run_id
        if not target.exists():
            target.mkdir(parents=True)
            pafs.copy_files(self.artifact_dir(run_id), str(target), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        return target


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Parts as one table: numeric columns widen (int -> float); a column whose parts disagree otherwise
    (possible only in stages written before rows were checked) is read as text, with a warning."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        kinds: dict[str, set[str]] = {}
        for table in tables:
            for field in table.schema:
                kinds.setdefault(field.name, set()).add(str(arrow_kind(field.type)))
        mixed = sorted(name for name, seen in kinds.items() if len(seen - {"None"}) > 1 and seen - {"None"} != {
            "int", "float"})
        warnings.warn(f"columns {', '.join(mixed)} hold different types in different parts; read as text",
                      stacklevel=3)
        fixed = []
        for table in tables:
            for name in mixed:
                if name in table.column_names:
                    index = table.column_names.index(name)
                    text = pa.array([None if v is None else str(v) for v in table.column(name).to_pylist()],
                                    pa.string())
                    table = table.set_column(index, name, text)
            fixed.append(table)
        return pa.concat_tables(fixed, promote_options="permissive")


def latest_attempts(table: pa.Table) -> pa.Table:
    """Keep only the rows of each run's highest attempt."""
    if "attempt" not in table.column_names:
        return table
    best = table.group_by("run_id").aggregate([("attempt", "max")])
    highest = dict(zip(best["run_id"].to_pylist(), best["attempt_max"].to_pylist(), strict=True))
    wanted = pa.array([highest[r] for r in table["run_id"].to_pylist()], table["attempt"].type)
    return table.filter(pc.equal(table["attempt"], wanted))


class RowWriter:
    """Buffers one stage's rows and writes them as one atomic Parquet part per flush.

    A flush happens every `flush_rows` rows, or on `tick()` once `flush_s` passed since the last one,
    so a killed driver loses at most the rows of the last few seconds (their runs are re-run on resume).
    """

    def __init__(self, store: ResultStore, stage: str, flush_rows: int = 5000, flush_s: float = 2.0,
                 on_flush: Callable[[list[dict[str, Any]]], None] | None = None, steps: bool = False) -> None:
        """`on_flush` gets each batch of rows once it is stored (experiment tracking mirrors them); `steps`:
        write the stage's step rows (`ctx.report`) instead of its result rows."""
        self.store, self.stage, self.flush_rows, self.flush_s = store, stage, flush_rows, flush_s
        self.on_flush, self.steps = on_flush, steps
        self.before_flush: Callable[[], None] | None = None  # e.g. store a stage's step rows before its results
        self.rows: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def tick(self) -> None:
        if self.rows and time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            if self.before_flush is not None:
                self.before_flush()
            write = self.store.write_steps if self.steps else self.store.write_rows
            write(self.stage, self.rows)
            rows, self.rows = self.rows, []
            if self.on_flush is not None:
                self.on_flush(rows)
        self.last_flush = time.monotonic()


def load_results(root: str, sweep: str, stage: str, latest: bool = True) -> Any:
    """A stage's rows as a pandas DataFrame (the public reading API)."""
    return ResultStore(root, sweep).read_stage(stage, latest=latest).to_pandas()


def load_steps(root: str, sweep: str, stage: str, latest: bool = True) -> Any:
    """A stage's step rows (`ctx.report`) as a pandas DataFrame; see `ResultStore.step_rows`."""
    return ResultStore(root, sweep).step_rows(stage, latest=latest).to_pandas()


class SweepLock:
    """One driver per sweep: an exclusive lock file beside the results (local roots)."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.handle: Any = None

    def __enter__(self) -> SweepLock:
        if not self.store.is_local:
            return self
        import fcntl
        import socket

        directory = Path(self.store.base)
        path = directory / ".lock"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "a+")  # held open for the lock's lifetime
        except OSError as exc:
            raise StoreError(f"{path}: cannot open the sweep's lock file: {exc}") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise StoreError(
                f"{path}: sweep '{self.store.sweep}' is being run by {holder}; wait for it to finish "
                "(two drivers on one sweep would compute the same runs twice)"
            ) from None
        with contextlib.suppress(OSError):  # a full disk may refuse the note; the lock itself is held
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
