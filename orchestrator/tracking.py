"""Experiment tracking: mirror stored runs into MLflow, TensorBoard or W&B.

The Parquet store stays the source of truth; a tracker gets a copy of each run once its rows are
stored (`run --track`, in the driver, never in workers) or later from the store (`export --to`).
Every tracker is imported lazily: nothing here imports mlflow, tensorboard or wandb unless asked.

What one run becomes (`TrackedRun`):
- tags `run_id`, `sweep`, `stage`, `task`, `status`, `attempt` (also `task_version`, `git_commit`,
  `error_type` and `artifact_dir` when known); the run's name is `<stage>/<run_id>`;
- params: the run's parameter columns (nested values as the JSON text the store holds) and `seed`;
- metrics: its numeric (int, float, bool as 0/1) non-parameter columns. Rows with a `step` value
  (`ctx.report(step=..., **metrics)`) are logged at that step. The result row of a one-row run is logged
  once, one step after the last reported step (at 0 when the run reported none), so it never overwrites a
  report; a run with several result rows (one per token, example, layer) logs row i at step i (after the
  reports, if any), in stored order, so every stored value is there and none is averaged away;
- artifacts: the run's `artifacts/<run_id>/` directory when it exists. MLflow copies the files into its
  artifact store; W&B logs a reference artifact (by path, nothing copied); TensorBoard records the path.

A run is keyed by (stage, run_id, attempt): logging it again (a second `export`) adds nothing, and a
`retry` attempt is a new tracked run beside the failed one, as the store keeps both attempts.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.schema import RESERVED_COLUMNS
from orchestrator.spec import TrackingSpec

if TYPE_CHECKING:
    from orchestrator.plan import SweepPlan
    from orchestrator.store import ResultStore

BACKENDS = ("mlflow", "tensorboard", "wandb")
INSTALL_HINT = "pip install 'interp-sweeps[tracking]'"
STEP = "step"
MLFLOW_STATUS = {"ok": "FINISHED", "pruned": "KILLED"}  # every other status is a failure: FAILED
_TAG_COLUMNS = ("task", "task_version", "status", "error_type", "git_commit")


# ---------------------------------------------------------------- what a tracker logs


@dataclass
class TrackedRun:
    """One stored run (one attempt) as a tracker sees it."""

    sweep: str
    stage: str
    run_id: str
    attempt: int
    status: str
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: list[tuple[int, dict[str, float]]]  # (step, metric values), steps ascending
    artifact_dir: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.run_id}"

    @property
    def key(self) -> str:
        """Unique per (stage, run, attempt) in a sweep; safe as a W&B id and a directory name."""
        stage = re.sub(r"[^A-Za-z0-9_-]", "_", self.stage)[:40]
        return f"{stage}-{self.run_id}" + (f"-attempt{self.attempt}" if self.attempt > 1 else "")


def _number(value: Any) -> float | None:
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy / pandas scalars
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _has_step(row: dict[str, Any]) -> bool:
    step = row.get(STEP)
    return step is not None and not (isinstance(step, float) and math.isnan(step))


def tracked_run(rows: Sequence[dict[str, Any]], params: Iterable[str],
                step_rows: Sequence[dict[str, Any]] | None = None,
                artifact_dir: Path | None = None) -> TrackedRun:
    """A run as trackers log it, from its stored rows (one attempt) and its parameter names.

    `step_rows` are its per-step reports, each with a `step` key; when None, rows that carry a `step`
    value are taken as the run's step rows and the others as its result rows.
    """
    if not rows and not step_rows:
        raise ValueError("a tracked run needs at least one row")
    if step_rows is None:
        step_rows = [row for row in rows if _has_step(row)]
        rows = [row for row in rows if not _has_step(row)]  # none: a run stopped after its reports
    first = (rows or step_rows)[0]
    names = [p for p in params if p in first]
    skip = {*RESERVED_COLUMNS, *names, STEP}
    attempt = int(first.get("attempt") or 1)
    tags = {"run_id": str(first["run_id"]), "sweep": str(first["sweep"]), "stage": str(first["stage"]),
            "attempt": str(attempt)}
    tags.update({column: str(first[column]) for column in _TAG_COLUMNS if first.get(column) is not None})
    if first.get("error"):
        tags["error"] = str(first["error"])[:1000]
    values = {p: first[p] for p in names}
    if "seed" not in values and first.get("seed") is not None:
        values["seed"] = first["seed"]
    metrics: dict[int, dict[str, float]] = {}

    def add(step: int, row: dict[str, Any]) -> None:
        found = {k: n for k, v in row.items() if k not in skip and (n := _number(v)) is not None}
        if found:
            metrics.setdefault(step, {}).update(found)

    for row in step_rows:
        add(int(row[STEP]), row)
    first_step = max((int(row[STEP]) for row in step_rows), default=-1) + 1
    for index, row in enumerate(rows):
        add(first_step + index, row)
    artifacts = artifact_dir if artifact_dir is not None and artifact_dir.is_dir() else None
    if artifacts is not None:
        tags["artifact_dir"] = str(artifacts)
    return TrackedRun(tags["sweep"], tags["stage"], tags["run_id"], attempt, tags.get("status", ""),
                      tags, values, sorted(metrics.items()), artifacts)


def runs_of(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Rows grouped per (run_id, attempt), in stored order."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((str(row["run_id"]), int(row.get("attempt") or 1)), []).append(row)
    return grouped


class TrackingError(OrchestratorError):
    """A tracker refused a run during `export` (during `run`, the same failure is a warning)."""


# ---------------------------------------------------------------- trackers


class Tracker(Protocol):
    name: str

    def log_run(self, run: TrackedRun) -> bool:
        """Log one run; False when it was already logged (nothing added)."""
        ...

    def close(self) -> None: ...


def _import(module: str, backend: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"--track {backend}: {module} is not installed ({exc}); {INSTALL_HINT}") from None


class MlflowTracker:
    """MLflow: experiment = the sweep (or `experiment`), tracking URI from MLFLOW_TRACKING_URI."""

    name = "mlflow"

    def __init__(self, experiment: str) -> None:
        _import("mlflow", self.name)
        for noisy in ("mlflow", "alembic"):  # table creation and migrations log at INFO on first use
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # honours MLFLOW_TRACKING_URI
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id: str = (found.experiment_id if found is not None
                                   else self.client.create_experiment(experiment))
        self.known: set[tuple[str, str, str]] | None = None

    def _known(self) -> set[tuple[str, str, str]]:
        """(stage, run_id, attempt) of every run already in the experiment: read once, then kept."""
        if self.known is None:
            self.known, token = set(), None
            while True:
                page = self.client.search_runs([self.experiment_id], "tags.run_id != ''", max_results=10_000,
                                               page_token=token)
                for found in page:
                    tags = found.data.tags
                    self.known.add((tags.get("stage", ""), tags.get("run_id", ""), tags.get("attempt", "1")))
                token = page.token
                if not token:
                    break
        return self.known

    def log_run(self, run: TrackedRun) -> bool:
        from mlflow.entities import Metric, Param

        key = (run.stage, run.run_id, str(run.attempt))
        if key in self._known():
            return False
        created = self.client.create_run(self.experiment_id, run_name=run.name, tags=run.tags)
        mlflow_id = created.info.run_id
        now = int(time.time() * 1000)
        params = [Param(_mlflow_key(k), _param_text(v)) for k, v in run.params.items()]
        metrics = [Metric(_mlflow_key(k), v, now, step) for step, values in run.metrics for k, v in values.items()]
        for start in range(0, len(params), 100):  # MLflow's limits per batch: 100 params, 1000 metrics
            self.client.log_batch(mlflow_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(mlflow_id, metrics=metrics[start:start + 1000])
        if run.artifact_dir is not None:
            self.client.log_artifacts(mlflow_id, str(run.artifact_dir))
        self.client.set_terminated(mlflow_id, MLFLOW_STATUS.get(run.status, "FAILED"))
        self._known().add(key)
        return True

    def close(self) -> None:
        pass


def _mlflow_key(name: str) -> str:
    """A column name as MLflow accepts it: alphanumerics, `_ - . / :` and spaces (others become `_`)."""
    return re.sub(r"[^\w\-. /:]", "_", name).strip("/") or "_"


def _param_text(value: Any, limit: int = 6000) -> str:
    """A parameter as text (MLflow keeps at most 6000 characters of a value; longer ones are cut)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TensorboardTracker:
    """TensorBoard: one event directory per run, `<dir>/tensorboard/<stage>/<run_id>`: scalars per step,
    the run's params and tags as hparams (so the HParams tab compares runs)."""

    name = "tensorboard"

    def __init__(self, directory: Path) -> None:
        _import("tensorboard", self.name)
        self.root = directory / "tensorboard"

    def run_dir(self, run: TrackedRun) -> Path:
        return self.root / run.stage / (run.run_id + (f"-attempt{run.attempt}" if run.attempt > 1 else ""))

    def log_run(self, run: TrackedRun) -> bool:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        target = self.run_dir(run)
        if any(target.glob("events.out.tfevents.*")):
            return False
        writer = EventFileWriter(str(target))
        try:
            now = time.time()
            hparams: dict[str, Any] = {k: v if isinstance(v, (bool, int, float, str)) else _param_text(v)
                                       for k, v in run.params.items()}
            hparams.update({f"tag.{k}": v for k, v in run.tags.items()})
            writer.add_event(Event(wall_time=now, step=0, summary=summary_v2.hparams_pb(hparams, trial_id=run.name)))
            for step, values in run.metrics:
                scalars = [Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
                writer.add_event(Event(wall_time=now, step=step, summary=Summary(value=scalars)))
        finally:
            writer.close()
        return True

    def close(self) -> None:
        pass


class WandbTracker:
    """W&B: project = the sweep, group = the stage, one run per stored run; offline unless WANDB_MODE says
    otherwise; run files under `<dir>/wandb/`."""

    name = "wandb"

    def __init__(self, directory: Path, project: str) -> None:
        self.wandb = _import("wandb", self.name)
        self.directory, self.project = directory, project
        self.directory.mkdir(parents=True, exist_ok=True)

    def logged(self, run: TrackedRun) -> bool:
        """Whether this run already has a local W&B run directory (offline or synced)."""
        return any((self.directory / "wandb").glob(f"*run-????????_??????-{run.key}"))

    def log_run(self, run: TrackedRun) -> bool:
        if self.logged(run):
            return False
        settings = self.wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False,
                                       disable_git=True)
        handle = self.wandb.init(
            project=self.project, group=run.stage, job_type=run.stage, name=run.name, id=run.key,
            config={**run.params, **{f"tag.{k}": v for k, v in run.tags.items()}}, tags=[run.stage, run.status],
            dir=str(self.directory), mode=None if os.environ.get("WANDB_MODE") else "offline",
            reinit="create_new", settings=settings,
        )
        try:
            for step, values in run.metrics:
                handle.log(values, step=step)
            handle.summary.update({k: v for k, v in run.tags.items() if k in ("run_id", "status", "stage")})
            if run.artifact_dir is not None:
                artifact = self.wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", run.key), type="run-artifacts")
                artifact.add_reference(run.artifact_dir.resolve().as_uri(), checksum=False)
                handle.log_artifact(artifact)
        finally:
            handle.finish(exit_code=0 if run.status in ("ok", "pruned") else 1)
        return True

    def close(self) -> None:
        self.wandb.teardown()  # stops W&B's service process, which would otherwise outlive the command


# ---------------------------------------------------------------- the driver's side


@dataclass
class TrackingOptions:
    """Which trackers, and where the file-based ones (TensorBoard, W&B) write."""

    backends: tuple[str, ...] = ()
    directory: str | None = None  # default: <results>/<sweep>/tracking (local results roots)
    experiment: str | None = None  # MLflow experiment, W&B project (default: the sweep's name)

    def __post_init__(self) -> None:
        for backend in self.backends:
            if backend not in BACKENDS:
                raise UsageError(f"--track {backend}: unknown tracker (choose from {', '.join(BACKENDS)})")
        self.backends = tuple(dict.fromkeys(self.backends))

    @classmethod
    def merged(cls, spec: TrackingSpec, given: TrackingOptions | None) -> TrackingOptions:
        """The spec's `tracking:` block with the command's options on top (`--track` adds backends)."""
        given = given or cls()
        return cls(tuple(spec.backends) + given.backends, given.directory or spec.dir,
                   given.experiment or spec.experiment)


def parse_backends(values: Iterable[str] | None, option: str = "--track") -> tuple[str, ...]:
    """`--track mlflow --track wandb` or `--track mlflow,wandb`; refuses unknown names."""
    names = [part.strip() for value in values or () for part in value.split(",") if part.strip()]
    for name in names:
        if name not in BACKENDS:
            close = difflib.get_close_matches(name, BACKENDS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"{option} {name}: unknown tracker ({hint}choose from {', '.join(BACKENDS)})")
    return tuple(dict.fromkeys(names))


def make_tracker(backend: str, directory: Path | None, experiment: str) -> Tracker:
    if backend == "mlflow":
        return MlflowTracker(experiment)
    assert directory is not None  # checked when the tracking was set up
    if backend == "tensorboard":
        return TensorboardTracker(directory)
    return WandbTracker(directory, experiment)


@dataclass
class Tracking:
    """The driver's trackers: each stored run goes to every one; a tracker that fails is warned about once,
    then switched off for the rest of the command (the results themselves are stored regardless)."""

    options: TrackingOptions
    sweep: str
    default_dir: Path | None
    warn: Callable[[str], None] = field(default=lambda text: warnings.warn(text, stacklevel=2))
    strict: bool = False  # a tracker's failure raises TrackingError instead of a warning
    trackers: dict[str, Tracker | None] = field(default_factory=dict)
    logged: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    pending: dict[tuple[str, str, int], tuple[list[dict[str, Any]], list[str], Callable[[str], Path | None]]] = (
        field(default_factory=dict))  # (stage, run_id, attempt) -> step rows stored before the result rows

    def __post_init__(self) -> None:
        """Refuses, before anything runs, a tracker whose package is not installed (imports nothing)."""
        import importlib.util

        for backend in self.options.backends:
            if importlib.util.find_spec(backend) is None:  # each backend's module has its name
                raise UsageError(f"--track {backend}: {backend} is not installed; {INSTALL_HINT}")
            if backend != "mlflow" and self.directory is None:
                raise UsageError(f"--track {backend} writes local files and the results root is not local: pass "
                                 "--track-dir (or `tracking: {dir: ...}` in the spec)")

    @property
    def directory(self) -> Path | None:
        return Path(self.options.directory) if self.options.directory else self.default_dir

    def _tracker(self, backend: str) -> Tracker | None:
        if backend not in self.trackers:
            self.trackers[backend] = make_tracker(backend, self.directory, self.options.experiment or self.sweep)
        return self.trackers[backend]

    def log(self, run: TrackedRun) -> None:
        for backend in self.options.backends:
            if backend in self.trackers and self.trackers[backend] is None:
                continue  # switched off after a failure
            try:
                tracker = self._tracker(backend)
                assert tracker is not None
                if tracker.log_run(run):
                    self.logged[backend] = self.logged.get(backend, 0) + 1
                else:
                    self.skipped[backend] = self.skipped.get(backend, 0) + 1
            except Exception as exc:  # tracking never costs a result: warn once, stop tracking to it
                self.trackers[backend] = None
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if self.strict:
                    raise TrackingError(f"tracking to {backend} failed at run {run.run_id} of stage "
                                        f"'{run.stage}' ({type(exc).__name__}: {reason})") from exc
                self.warn(f"tracking to {backend} failed at run {run.run_id} of stage '{run.stage}' "
                          f"({type(exc).__name__}: {reason}); {backend} tracking is off for the rest of this "
                          f"command. The results are stored: `orchestrator export SPEC --to {backend}` logs them "
                          "later")

    def log_rows(self, rows: Iterable[dict[str, Any]], params: Iterable[str],
                 artifact_dir: Callable[[str], Path | None] = lambda run_id: None) -> None:
        """Log every run (attempt) among `rows` that has its result rows there.

        Rows stored in several batches (per-step reports as they happen, the result row when the run
        ends) make one tracked run: a run with only step rows so far is held until its result rows come,
        or until `log_pending` (a run stopped after its reports has none).
        """
        names = list(params)
        for key, run_rows in runs_of(rows).items():
            stage = str(run_rows[0].get("stage"))
            held = self.pending.pop((stage, *key), None)
            if held is not None:
                run_rows = held[0] + run_rows
            if all(_has_step(row) for row in run_rows):
                self.pending[(stage, *key)] = (run_rows, names, artifact_dir)
            else:
                self.log(tracked_run(run_rows, names, artifact_dir=artifact_dir(key[0])))

    def log_pending(self) -> None:
        """Log the runs whose step rows came without result rows (stopped, pruned, or steps only)."""
        while self.pending:
            (_, run_id, _), (rows, names, artifact_dir) = self.pending.popitem()
            self.log(tracked_run(rows, names, artifact_dir=artifact_dir(run_id)))

    def close(self) -> None:
        self.log_pending()
        for backend, tracker in self.trackers.items():
            if tracker is not None:
                try:
                    tracker.close()
                except Exception as exc:
                    self.warn(f"closing the {backend} tracker failed: {exc}")


def step_row(row: dict[str, Any], sweep: str, stage: str) -> dict[str, Any]:
    """A stored `ctx.report` row as its run's other rows read: with its sweep and stage, without the time
    it was stored (`reported_at` is no metric)."""
    return {**{k: v for k, v in row.items() if k != "reported_at"}, "sweep": sweep, "stage": stage}


def export(plan: SweepPlan, store: ResultStore, options: TrackingOptions,
           stages: Iterable[str] | None = None) -> Tracking:
    """Log every stored run (every attempt) of the plan's stages; runs a tracker already has are skipped.

    Returns the tracking, whose `logged` and `skipped` count the runs per backend. Unlike `run --track`,
    a tracker's failure here is an error: nothing else is at stake.
    """
    tracking = Tracking(options, plan.name, store.tracking_dir(), strict=True)
    try:
        for name in stages or plan.order:
            reported = store.step_rows(name, latest=False).to_pylist()
            steps = [step_row(row, plan.name, name) for row in reported]
            rows = steps + store.read_stage(name, latest=False).to_pylist()  # a run's reports, then its result
            tracking.log_rows(rows, plan.stages[name].task.params.model_fields, store.local_artifact_dir)
            tracking.log_pending()
    finally:
        tracking.close()
    return tracking
