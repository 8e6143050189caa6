"""The family's sweep files expand (the orchestrator's own parser) into runs whose params validate."""

from pathlib import Path

import pytest

SWEEPS = Path(__file__).resolve().parents[3] / "sweeps"


@pytest.mark.parametrize("name", ["probing.yaml", "probing_small.yaml"])
def test_sweep_expands_and_validates(name, tmp_path):
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    counts = build_plan(load_spec(SWEEPS / name)).counts()
    assert set(counts) == {"swap", "noise", "saliency", "inject"}
    assert all(n > 0 for n in counts.values())
    if name == "probing_small.yaml":
        assert sum(counts.values()) <= 24  # about a minute on 2 cores
