"""The family's sweep files name registered tasks and valid parameters (the first point of every axis is
validated by the task's params model; the orchestrator's own parser is tested by the lead)."""

from pathlib import Path

import pytest
import yaml

from orchestrator.registry import get_task

SWEEPS = Path(__file__).resolve().parents[3] / "sweeps"
FILES = ["word_sensitivity.yaml", "word_sensitivity_small.yaml", "generalisation.yaml", "generalisation_small.yaml"]


def first(value, params):
    """The first value of an axis (grid, range, when, cases) or the plain value."""
    if isinstance(value, dict) and len(value) >= 1:
        if "grid" in value:
            return first(value["grid"][0], params)
        if "range" in value:
            return value["range"][0]
        if "when" in value:
            hit = all(params.get(k) == v for k, v in value["when"].items())
            return first(value["then"] if hit else value["else"], params)
        if "cases" in value:
            return value["cases"][0]
    return value


@pytest.mark.parametrize("name", FILES)
def test_sweep_points_validate(name):
    spec = yaml.safe_load((SWEEPS / name).read_text())
    assert spec["name"] and spec["stages"]
    for stage_name, stage in spec["stages"].items():
        definition = get_task(stage["task"])
        params: dict = {}
        for key, value in stage["params"].items():
            value = first(value, params)
            if isinstance(value, dict) and key not in definition.params.model_fields:
                params.update(value)  # a cases axis sets several params
            else:
                params[key] = value
        definition.params(**params)
        for need in stage.get("needs", []):
            assert need in spec["stages"], f"{name}: {stage_name} needs unknown stage {need}"
            upstream = spec["stages"][need]["params"]
            assert "layer" in upstream and "layer" in stage["params"]  # the shared name that matches runs
