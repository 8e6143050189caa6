"""Runs sharing a setup key (a model) are served by warm actors that load it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api import run_spec
from orchestrator.store import load_results

pytestmark = pytest.mark.usefixtures("ray_session")


def run_lookups(write_spec, tmp_path: Path, params: str):
    """Run a `demo.lookup` stage with `params` (YAML flow) on 2 one-CPU workers: (outcome, its rows)."""
    spec = write_spec(f"""\
        name: reuse
        stages:
          s:
            task: demo.lookup
            resources: {{num_cpus: 1}}
            max_workers: 2
            params: {params}
    """)
    outcome, = run_spec(spec, str(tmp_path / "r"))
    return outcome, load_results(str(tmp_path / "r"), "reuse", "s")


def test_model_loaded_once_per_actor_and_key(write_spec, tmp_path: Path) -> None:
    # Invariant: 60 runs over 2 models cost at most one load per (actor, model), and each run is served
    # by the model it asked for.
    outcome, df = run_lookups(write_spec, tmp_path, "{model: {grid: [alpha, beta]}, i: {range: [0, 30]}, "
                                                    "load_seconds: 0.3}")
    assert len(df) == 60 and (df.status == "ok").all()
    assert (df.served_by == df.model).all()
    distinct_loads = df.groupby(["pid", "model"]).loaded_at.nunique()
    assert (distinct_loads == 1).all()
    assert outcome.setup_loads <= 4
    assert df.groupby("model").loaded_at.nunique().max() <= 2


def test_few_long_runs_of_one_model_use_every_slot(write_spec, tmp_path: Path) -> None:
    # Invariant: two runs of one model on two slots run side by side on two actors, not queued behind
    # each other on the first actor (a stage of a few long real-model runs would otherwise run serially).
    _, df = run_lookups(write_spec, tmp_path, "{model: alpha, i: {range: [0, 2]}, run_seconds: 2.0}")
    assert len(df) == 2 and (df.status == "ok").all()
    assert df.pid.nunique() == 2, df[["i", "pid", "started_at"]]
    first, second = sorted(df.started_at)
    assert (second - first).total_seconds() < 1.5  # the second did not wait for the first's 2 s
