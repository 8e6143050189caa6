"""The paper-scale ReAGent sweeps expand (the orchestrator's own parser) into runs with the settings of the
original's reported runs (casszhao/ReAGent; notes B.2, B.4, B.7)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PREPARED = ROOT.parent / "shared/data/reagent/analogies_prepared"


def _runs(name, tmp_path):
    from orchestrator.stages import Sweep

    from orchestrator.spec import load_spec

    sweep = Sweep(load_spec(ROOT / "sweeps" / name), str(tmp_path))
    return [run for plan in sweep.plans.values() for run in plan.runs()]


@pytest.mark.parametrize("name", ["reagent_analogies.yaml", "reagent_sequence.yaml"])
def test_paper_sweeps_score_unconverged_targets_as_the_original(name, tmp_path):
    # invariant: every run of a paper-scale spec scores targets no ReAGent probe stopped on as the
    # original's NaN scores (Soft-NS 0, Soft-NC 1), not with the task's mean_all default
    runs = _runs(name, tmp_path)
    assert len(runs) > 40 and {run.params["on_no_convergence"] for run in runs} == {"nan"}


def test_sequence_sweep_uses_the_stored_results_attention(tmp_path):
    # invariant: sequence-level "attention" is inseq 0.4's (last layer, sum-normalised), as the stored results
    runs = _runs("reagent_sequence.yaml", tmp_path)
    assert {run.params["original_sequence_attention"] for run in runs} == {True}


@pytest.mark.skipif(not PREPARED.is_dir(), reason="shared data absent")
def test_analogy_sweep_gives_each_model_the_inputs_the_original_kept_for_it(tmp_path):
    # invariant: each model attributes the prepared records that the original produced with that model
    runs = _runs("reagent_analogies.yaml", tmp_path)
    models = set()
    for run in runs:
        path = (ROOT / run.params["dataset"]).resolve()
        assert path.parent == PREPARED.resolve(), run.params["dataset"]
        with open(path) as f:
            assert json.loads(f.readline())["model"].lower() == run.params["model"].lower(), path
        models.add(run.params["model"])
    assert len(models) == 6
