"""`timeout_s`: a run past its time limit is stopped and stored as `timeout`, the sweep goes on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.api import run_spec
from orchestrator.scheduler import SchedulerConfig
from orchestrator.store import load_results


@pytest.mark.parametrize("executor", ["ray", "inline"])
def test_a_run_past_its_timeout_is_stored_as_timeout_and_retried_as_a_system_failure(
        write_spec, tmp_path: Path, executor: str, request) -> None:
    # Invariant: the hung run ends at its limit (elapsed time stored), is retried `retries.system` times,
    # and every other run of the stage is stored as usual.
    if executor == "ray":
        request.getfixturevalue("ray_session")
    spec = write_spec("""\
        name: slow
        stages:
          s:
            task: demo.sleep
            timeout_s: 1
            retries: {system: 1, backoff_s: 0.1}
            params: {i: {range: [0, 4]}, seconds: {when: {i: 2}, then: 60, else: 0.05}}
    """)
    start = time.perf_counter()
    (outcome,) = run_spec(spec, tmp_path / "r", executor=executor)
    assert time.perf_counter() - start < 45  # never the hung run's 60 s
    df = load_results(str(tmp_path / "r"), "slow", "s").set_index("i")
    assert outcome.failed == 1 and (df.drop(index=2).status == "ok").all()
    hung = df.loc[2]
    assert hung.status == hung.error_type == "timeout" and hung.attempt == 2
    assert 0.9 < hung.duration_s < 10 and "timeout of 1 s" in hung.error


@pytest.mark.usefixtures("ray_session")
def test_a_warm_actor_past_its_timeout_is_replaced_and_its_model_reloaded(write_spec, tmp_path: Path) -> None:
    # Invariant: a run on a warm-model actor that overruns is stopped; the actor is replaced (the next runs
    # see a freshly loaded model), including a run stuck where the in-run alarm cannot reach it, which the
    # driver's backstop kills.
    spec = write_spec("""\
        name: actors
        stages:
          s:
            task: demo.lookup
            timeout_s: 1
            max_workers: 1
            retries: {system: 0}
            params:
              model: m
              i: {range: [0, 6]}
              run_seconds: {when: {i: [1, 3]}, then: 60, else: 0}
              ignore_alarm: {when: {i: 3}, then: true, else: false}
    """)
    start = time.perf_counter()
    run_spec(spec, tmp_path / "r", scheduler=SchedulerConfig(timeout_grace_s=2))
    assert time.perf_counter() - start < 60
    df = load_results(str(tmp_path / "r"), "actors", "s").set_index("i").sort_index()
    assert list(df.status) == ["ok", "timeout", "ok", "timeout", "ok", "ok"], df.error.tolist()
    assert "worker was killed" in df.loc[3, "error"]  # the backstop, not the in-run alarm
    loads = df[df.status == "ok"].groupby("loaded_at").size()
    assert len(loads) == 3  # one model load before, one after each stopped run
