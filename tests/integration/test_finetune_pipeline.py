"""A model fine-tuned inside the sweep: `diversity.finetune` reports its curve and saves the model that
the downstream diversity stages load as `model: upstream:finetune` (inline executor: no Ray needed)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.api import run_spec
from orchestrator.store import load_results, load_steps

PIPELINE = """\
    name: narrowing
    stages:
      finetune:
        task: diversity.finetune
        params: {base_model: tiny-gpt2-pretrained, text: narrow, steps: 20, eval_every: 5, lr: 5.0e-3}
      next_token:
        task: diversity.next_token
        needs: [finetune]
        params:
          model: {grid: [tiny-gpt2-pretrained, "upstream:finetune"]}
          max_docs: 6
          batch_size: 6
"""


def test_the_finetuned_model_is_read_downstream_and_a_changed_finetune_reruns_it(write_spec, tmp_path: Path):
    spec, results = write_spec(PIPELINE), tmp_path / "r"
    run_spec(spec, results, executor="inline")
    steps = load_steps(str(results), "narrowing", "finetune")
    assert sorted(steps.step) == [5, 10, 15, 20]
    assert steps.sort_values("step").narrow_loss.is_monotonic_decreasing
    tuned = load_results(str(results), "narrowing", "finetune")
    (finetune_id,) = tuned.run_id
    rows = load_results(str(results), "narrowing", "next_token")
    model_rows = rows[rows.level == "model"].set_index("model")
    assert all(list(ids) == [finetune_id] for ids in rows.upstream_run_ids)
    # the narrowed model is more confident and more surprised by general text than its base
    assert model_rows.loc["upstream:finetune", "entropy"] < model_rows.loc["tiny-gpt2-pretrained", "entropy"]
    assert model_rows.loc["upstream:finetune", "perplexity"] > model_rows.loc["tiny-gpt2-pretrained", "perplexity"]

    # another fine-tune is another upstream run: the runs reading it are new runs, never stale rows
    outcomes = run_spec(spec, results, ["stages.finetune.params.steps=40"], executor="inline")
    assert {o.name: o.executed for o in outcomes} == {"finetune": 1, "next_token": 2}
    rows = load_results(str(results), "narrowing", "next_token")
    latest = rows[(rows.level == "model") & (rows.model == "upstream:finetune")]
    assert len(latest) == 2 and latest.entropy.nunique() == 2
