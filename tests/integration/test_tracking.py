"""Experiment tracking round trips: runs stored as Parquet, read back from real MLflow (sqlite), TensorBoard
event files and W&B offline runs, each with the trackers' own readers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api import open_sweep
from orchestrator.errors import UsageError
from orchestrator.store import ResultStore
from orchestrator.tracking import Tracking, TrackingOptions, export, parse_backends, tracked_run

REPO = Path(__file__).resolve().parents[2]
SPEC = """\
name: tracked
tracking: {backends: [tensorboard]}   # the spec's block; the command line adds mlflow and wandb
stages:
  surface:
    task: demo.quadratic
    params: {x: {grid: [0.0, 2.0]}, y: -1.0, seed: {range: [0, 2]}}
  vectors:
    task: demo.vector
    params: {length: {grid: [4, 8]}, scale: 0.5}
  flaky:
    task: demo.flaky
    params: {i: {grid: [1, 2]}, fail_if_divisible_by: 2}
"""
PARAMS = {"surface": ["x", "y", "noise", "seed"], "vectors": ["length", "scale"],
          "flaky": ["i", "fail_if_divisible_by", "fail_while_file_exists"]}
METRIC = {"surface": "loss", "vectors": "norm", "flaky": "value"}


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # W&B offline: the default
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**base, "PYTHONPATH": str(REPO), **env})


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sweep run once with three trackers (`run --track mlflow,wandb` + the spec's tensorboard)."""
    work = tmp_path_factory.mktemp("tracking")
    spec = work / "spec.yaml"
    spec.write_text(SPEC)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    ran = cli("run", str(spec), "--results", str(work / "results"), "--executor", "inline",
              "--track", "mlflow,wandb", cwd=work, env=env)
    assert ran.returncode == 1, ran.stderr  # the planted failure (flaky i=2); every other run ok
    store = ResultStore(work / "results", "tracked")
    rows = {stage: store.read_stage(stage).to_pylist() for stage in PARAMS}
    return {"work": work, "spec": spec, "env": env, "rows": rows, "store": store, "ran": ran}


def stored_runs(tracked: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for rows in tracked["rows"].values() for row in rows]


def mlflow_runs(uri: str, experiment: str = "tracked") -> Any:
    """`mlflow.search_runs` against `uri`; the process-wide URI (and the env var MLflow sets) restored after."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment], max_results=1000)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # back to MLFLOW_TRACKING_URI
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


def test_mlflow_holds_every_stored_run_with_params_metrics_tags(tracked: dict[str, Any]) -> None:
    # Invariant: each stored run is one MLflow run whose tags, params and metrics equal its Parquet row.
    found = mlflow_runs(tracked["env"]["MLFLOW_TRACKING_URI"])
    rows = stored_runs(tracked)
    assert len(found) == len(rows) == 8
    by_id = {r["tags.run_id"]: r for r in found.to_dict("records")}
    for row in rows:
        run = by_id[row["run_id"]]
        assert (run["tags.sweep"], run["tags.stage"], run["tags.task"]) == ("tracked", row["stage"], row["task"])
        assert run["tags.status"] == row["status"]
        assert run["status"] == ("FINISHED" if row["status"] == "ok" else "FAILED")
        for param in PARAMS[row["stage"]]:
            assert run[f"params.{param}"] == json.dumps(row[param]), param
        metric = METRIC[row["stage"]]
        if row["status"] == "ok":
            assert run[f"metrics.{metric}"] == pytest.approx(row[metric], rel=1e-12)
        else:
            assert run["tags.error_type"] == "task_error"
    vectors = [r for r in found.to_dict("records") if r["tags.stage"] == "vectors"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracked["env"]["MLFLOW_TRACKING_URI"])
    for run in vectors:  # the run's artifact directory, copied into MLflow's artifact store
        assert [a.path for a in client.list_artifacts(run["run_id"])] == ["vector.npy"]
        assert run["tags.artifact_dir"] == str(tracked["store"].local_artifact_dir(run["tags.run_id"]))
    assert not any(word in tracked["ran"].stderr for word in ("Traceback", "Warning", "tracking to", "wandb:"))


def test_tensorboard_event_files_read_back(tracked: dict[str, Any]) -> None:
    # Invariant: one event directory per run (the spec's `tracking:` block), scalars and hparams as stored.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    root = tracked["store"].tracking_dir() / "tensorboard"
    read = 0
    for row in stored_runs(tracked):
        events = EventAccumulator(str(root / row["stage"] / row["run_id"]))
        events.Reload()
        start = metadata.parse_session_start_info_plugin_data(
            events.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
        hparams = {k: v.string_value or v.number_value or v.bool_value for k, v in start.hparams.items()}
        assert hparams["tag.run_id"] == row["run_id"] and hparams["tag.status"] == row["status"]
        assert hparams["tag.stage"] == row["stage"] and hparams["tag.sweep"] == "tracked"
        metric = METRIC[row["stage"]]
        if row["status"] == "ok":
            assert hparams[PARAMS[row["stage"]][0]] == row[PARAMS[row["stage"]][0]]
            [scalar] = events.Scalars(metric)
            assert (scalar.step, scalar.value) == (0, pytest.approx(row[metric], rel=1e-6))  # float32 on disk
        read += 1
    assert read == 8


def wandb_records(path: Path) -> list[Any]:
    """The records of a `.wandb` file: W&B's protobuf `Record`s in its leveldb-log framing (7-byte header,
    32 KiB blocks, chunks of crc32 / length / type), as wandb-core writes them."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # block padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_run(path: Path) -> dict[str, Any]:
    """Config, history (step -> metrics), group, tags and exit code of one offline run."""
    run: dict[str, Any] = {"history": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, project=record.run.project, group=record.run.run_group,
                       tags=list(record.run.tags),
                       config={i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            run["history"][record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def test_wandb_offline_runs_read_back(tracked: dict[str, Any]) -> None:
    # Invariant: each stored run is one offline W&B run (project = sweep, group = stage) with its values.
    directory = tracked["store"].tracking_dir() / "wandb"
    files = {p.parent.name.rsplit("-", 1)[1]: p for p in directory.glob("offline-run-*/run-*.wandb")}
    rows = stored_runs(tracked)
    assert len(files) == len(rows) == 8
    for row in rows:
        run = wandb_run(files[row["run_id"]])
        assert (run["project"], run["group"], run["id"]) == ("tracked", row["stage"], f"{row['stage']}-{row['run_id']}")
        assert run["config"]["tag.run_id"] == row["run_id"] and run["config"]["tag.status"] == row["status"]
        assert all(run["config"][p] == row[p] for p in PARAMS[row["stage"]])
        assert run["exit_code"] == (0 if row["status"] == "ok" else 1)
        metric = METRIC[row["stage"]]
        if row["status"] == "ok":
            assert run["history"] == {0: {metric: pytest.approx(row[metric], rel=1e-12)}}
    # wandb's own reader agrees with ours on one run
    some = files[rows[0]["run_id"]]
    inspect = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json",
                              str(some)], capture_output=True, text=True, timeout=60)
    summary = json.loads(inspect.stdout)
    assert summary["state"] == "finished" and summary["config"] == {k: v for k, v in wandb_run(some)[
        "config"].items() if k != "_wandb"}
    assert summary["summary"]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-12)


def test_export_to_mlflow_matches_run_and_is_idempotent(tracked: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Invariant: `export --to mlflow` logs what `run --track mlflow` logged; exporting again adds nothing.
    uri = tracked["env"]["MLFLOW_TRACKING_URI"]  # the same store, another experiment (set by an override)
    args = ("export", str(tracked["spec"]), "tracking.experiment=exported", "--results",
            str(tracked["work"] / "results"), "--to", "mlflow")
    first = cli(*args, cwd=tracked["work"], env=tracked["env"])
    assert first.returncode == 0 and "mlflow: logged 8 runs, 0 already there" in first.stderr, first.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # again, in this process (saves a second start-up)
    plan, store = open_sweep(tracked["spec"], tracked["work"] / "results")
    again = export(plan, store, TrackingOptions(("mlflow",), experiment="exported"))
    assert (again.logged, again.skipped) == ({}, {"mlflow": 8})
    exported, during_run = mlflow_runs(uri, "exported"), mlflow_runs(uri)
    assert len(exported) == 8
    columns = sorted(c for c in during_run.columns if c.startswith(("params.", "metrics.", "tags.")) and
                     c not in ("tags.mlflow.source.name", "tags.mlflow.user", "tags.mlflow.source.type"))
    def table(df: Any) -> list[Any]:
        return df.sort_values("tags.run_id")[columns].astype(str).values.tolist()
    assert table(exported) == table(during_run)
    with pytest.raises(UsageError, match=r"--to mlfow: unknown tracker \(did you mean mlflow\?"):
        parse_backends(["mlflow,mlfow"], "--to")


def test_step_rows_and_multi_row_runs_are_logged_as_steps(tracked: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Invariant: per-step reports are logged at their step, the result row after them; a run with several
    # result rows logs row i at step i; every backend reads back the same curve.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["env"]["MLFLOW_TRACKING_URI"])  # experiment "steps"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    base = {"sweep": "steps", "stage": "train", "task": "demo.x", "status": "ok", "attempt": 1, "lr": 0.1}
    steps = [{**base, "run_id": "aaaa", "step": s, "train_loss": 1.0 / (s + 1)} for s in range(3)]
    result = [{**base, "run_id": "aaaa", "success": 0.75}]
    per_token = [{**base, "run_id": "bbbb", "token": i, "score": 0.5 * i} for i in range(4)]
    tracking = Tracking(TrackingOptions(("mlflow", "tensorboard", "wandb")), "steps", tmp_path / "tracking")
    tracking.log(tracked_run(result, ["lr"], step_rows=steps))
    tracking.log(tracked_run(per_token, ["lr"]))
    # the same run's rows stored in two batches, reports first (as `run` stores them): one tracked run
    tracking.log_rows([{**row, "run_id": "cccc"} for row in steps], ["lr"])
    assert tracking.logged == {"mlflow": 2, "tensorboard": 2, "wandb": 2}  # held until its result row
    tracking.log_rows([{**row, "run_id": "cccc"} for row in result], ["lr"])
    tracking.close()
    assert tracking.logged == {"mlflow": 3, "tensorboard": 3, "wandb": 3}

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = {r.data.tags["run_id"]: r.info.run_id for r in client.search_runs(
        [client.get_experiment_by_name("steps").experiment_id])}
    def history(run: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(found[run], key))
    assert history("aaaa", "train_loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert history("aaaa", "success") == [(3, 0.75)]
    assert history("cccc", "train_loss") == history("aaaa", "train_loss")
    assert history("cccc", "success") == [(3, 0.75)]
    assert history("bbbb", "score") == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5)]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "train" / "aaaa"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train_loss")] == [(0, 1.0), (1, 0.5), (2, 0.333333)]
    assert [(e.step, e.value) for e in events.Scalars("success")] == [(3, 0.75)]

    [file] = (tmp_path / "tracking" / "wandb").glob("offline-run-*-train-bbbb/run-*.wandb")
    assert wandb_run(file)["history"] == {i: {"token": i, "score": 0.5 * i} for i in range(4)}
    stopped = tracked_run(steps, ["lr"])  # only step rows stored (a run stopped after reporting): no extra step
    assert [step for step, _ in stopped.metrics] == [0, 1, 2] and stopped.params == {"lr": 0.1}


def test_a_failing_tracker_warns_once_and_loses_no_result(write_spec, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Invariant: a tracker that fails is a warning (once), never a lost row or a failed command.
    from orchestrator.api import run_spec
    from orchestrator.runner import NullProgress, RunOptions

    class Notes(NullProgress):
        def __init__(self) -> None:
            self.notes: list[str] = []

        def note(self, text: str) -> None:
            self.notes.append(text)

    (tmp_path / "blocked").write_text("a file where MLflow wants a directory")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/blocked/mlflow.db")
    spec = write_spec("name: down\nstages:\n  s:\n    task: demo.noop\n    params: {i: {range: [0, 3]}}\n")
    progress = Notes()
    outcomes = run_spec(spec, tmp_path / "r", options=RunOptions(tracking=TrackingOptions(("mlflow",))),
                        executor="inline", progress=progress)
    assert [o.ok for o in outcomes] == [3]
    assert len(ResultStore(tmp_path / "r", "down").read_stage("s")) == 3
    [note] = progress.notes
    assert note.startswith("tracking to mlflow failed at run ") and "export SPEC --to mlflow" in note


def test_a_retried_run_is_a_second_tracked_run_beside_the_failed_attempt(tracked: dict[str, Any], write_spec,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Invariant: tracked runs are keyed by (stage, run_id, attempt), as the store keeps attempts: `retry` adds
    # the new attempt, and exporting afterwards finds both already there.
    from mlflow.tracking import MlflowClient

    from orchestrator.api import run_spec
    from orchestrator.runner import RunOptions

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["env"]["MLFLOW_TRACKING_URI"])  # experiment "retried"
    marker = tmp_path / "fail"
    marker.write_text("")
    spec = write_spec(f"name: retried\nstages:\n  s:\n    task: demo.flaky\n"
                      f"    params: {{i: 2, fail_if_divisible_by: 2, fail_while_file_exists: '{marker}'}}\n")
    track = TrackingOptions(("mlflow",))
    [first] = run_spec(spec, tmp_path / "r", options=RunOptions(tracking=track), executor="inline")
    marker.unlink()
    [second] = run_spec(spec, tmp_path / "r", options=RunOptions(retry=True, tracking=track), executor="inline")
    assert (first.failed, second.ok) == (1, 1)
    client = MlflowClient()
    found = client.search_runs([client.get_experiment_by_name("retried").experiment_id])
    assert sorted((r.data.tags["attempt"], r.info.status, r.data.tags["status"]) for r in found) == [
        ("1", "FAILED", "task_error"), ("2", "FINISHED", "ok")]
    assert len({r.data.tags["run_id"] for r in found}) == 1
    plan, store = open_sweep(spec, tmp_path / "r")
    assert export(plan, store, track).skipped == {"mlflow": 2}


def test_trackers_are_imported_only_when_asked() -> None:
    # Invariant: the CLI, the runner and `plan` import none of mlflow, tensorboard, wandb.
    code = ("import sys, orchestrator.cli, orchestrator.runner, orchestrator.tracking; "
            "print(sorted({'mlflow', 'tensorboard', 'wandb'} & set(sys.modules)))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert shown.stdout.strip() == "[]", shown.stderr


def test_an_unknown_backend_in_the_spec_is_a_spec_error_naming_the_key(write_spec) -> None:
    # Invariant: `tracking:` is validated with the rest of the spec: file, line, key path and the choices.
    from orchestrator.errors import SpecError
    from orchestrator.spec import load_spec

    spec = write_spec("name: t\ntracking:\n  backends: [mlflow, tensorbord]\nstages:\n  s: {task: demo.noop}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert str(caught.value) == (f"{spec}:3: tracking.backends[1]: Input should be 'mlflow', 'tensorboard' or "
                                 "'wandb', got 'tensorbord'")
    with pytest.raises(SpecError, match=r"tracking\.backend: unknown key 'backend' \(did you mean 'backends'\?\)"):
        load_spec(write_spec("name: t\ntracking: {backend: [mlflow]}\nstages:\n  s: {task: demo.noop}\n"))


def test_ctx_report_curves_reach_mlflow_from_run_and_from_export(write_spec, tmp_path: Path) -> None:
    # Invariant: a run's `ctx.report` rows (the stage's step table) are its tracked curve, logged by
    # `run --track` as they are stored and by `export` from the store; the result row follows the curve.
    spec = write_spec("""\
        name: curves
        stages:
          s:
            task: demo.curve
            params: {x: {grid: [0.2, 0.7]}, y: 0.3, steps: 4}
    """)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    ran = cli("run", str(spec), "--results", str(tmp_path / "r"), "--executor", "inline", "--track", "mlflow",
              cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    exported = cli("export", str(spec), "--results", str(tmp_path / "r"), "--to", "mlflow",
                   "tracking.experiment=exported", cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr
    steps = ResultStore(tmp_path / "r", "curves").step_rows("s").to_pylist()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for experiment in ("curves", "exported"):
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert len(runs) == 2
        for run in runs:
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "score"))
            reported = sorted((r["step"], r["score"]) for r in steps if r["run_id"] == run.data.tags["run_id"])
            assert history[:-1] == [(s, pytest.approx(v)) for s, v in reported] and len(reported) == 4
            assert history[-1][0] == reported[-1][0] + 1  # the result row, one step after the last report
