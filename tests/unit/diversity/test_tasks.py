"""The diversity tasks called directly on tiny models (no Ray): seeding, padding, and the must-show."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from orchestrator.context import Upstream, local_context
from tasks.diversity import ops as compute
from tasks.diversity.task import (
    CompletionsParams,
    NextTokenParams,
    OutputDiversityParams,
    completions,
    load_embedder,
    next_token,
    output_diversity,
)
from tasks.diversity.task import (
    load as load_lm,
)


def call(fn, params, setup_fn=None, seed=0, **ctx_kwargs):
    """Call a task as the orchestrator would: setup first (when the task has one), then the task."""
    ctx = local_context(seed=seed, **ctx_kwargs)
    if setup_fn is not None:
        ctx.setup = setup_fn(params, ctx)
    return fn(params, ctx), ctx


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda scores: torch.isfinite(scores)[0].tolist()  # noqa: E731
    assert kept(compute.filter_logits(logits, 1.0, top_k=2)) == [True, True, False, False]
    assert kept(compute.filter_logits(logits, 1.0, top_p=0.7)) == [True, True, False, False]  # 0.5 + 0.3 >= 0.7
    assert kept(compute.filter_logits(logits, 1.0, top_p=0.5)) == [True, False, False, False]
    scaled = compute.filter_logits(logits, 0.5)
    assert torch.allclose(scaled.softmax(-1), (logits * 2).softmax(-1))
    with pytest.raises(ValueError, match="temperature"):
        compute.filter_logits(logits, 0.0)


def test_cached_sampling_equals_full_recompute(tiny_pair):
    # the KV-cache loop draws the same tokens as recomputing the whole sequence at every step
    from tasks.common.models import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_pair["base"])
    prompt = tokenizer("The cat sat on the").input_ids
    fast = compute.sample_continuations(model, prompt, 3, 1.0, 12, torch.Generator().manual_seed(5), top_k=50)
    generator = torch.Generator().manual_seed(5)
    seqs = torch.tensor([prompt] * 3)
    with torch.no_grad():
        for _ in range(12):
            scores = compute.filter_logits(model(input_ids=seqs).logits[:, -1], 1.0, 50)
            seqs = torch.cat([seqs, torch.multinomial(scores.softmax(-1), 1, generator=generator)], dim=1)
    assert fast == seqs[:, len(prompt) :].tolist()


def test_completions_are_seeded_by_the_run(tiny_pair):
    # same ctx.seed: same texts; another seed: other texts; a prompt's samples do not depend on the others
    params = CompletionsParams(model=str(tiny_pair["base"]), prompt_set="creative", n_samples=4, batch_size=3,
                               max_new_tokens=8)
    rows_a, ctx_a = call(completions, params, load_lm, seed=11)
    rows_b, _ = call(completions, params, load_lm, seed=11)
    rows_c, _ = call(completions, params, load_lm, seed=12)
    texts = lambda rows: [r["text"] for r in rows]  # noqa: E731
    assert texts(rows_a) == texts(rows_b)
    assert texts(rows_a) != texts(rows_c)
    assert len(rows_a) == 5 * 4 and {r["sample_index"] for r in rows_a} == {0, 1, 2, 3}
    fewer, _ = call(completions, params.model_copy(update={"max_prompts": 2}), load_lm, seed=11)
    assert texts(fewer) == texts(rows_a)[:8]
    records = [json.loads(line) for line in (ctx_a.artifact_dir / "completions.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == texts(rows_a) and records[0]["mode"] == "creative"
    assert all(r["n_new_tokens"] <= 8 for r in rows_a)


def test_next_token_task_batching_and_padding(tiny_pair):
    # documents of different lengths batched with right padding give the same numbers as one at a time
    model = str(tiny_pair["base"])
    one, _ = call(next_token, NextTokenParams(model=model, max_docs=6, batch_size=1, max_length=24), load_lm)
    many, ctx = call(next_token, NextTokenParams(model=model, max_docs=6, batch_size=5, max_length=24), load_lm)
    assert [r["level"] for r in many] == ["document"] * 6 + ["model"]
    for a, b in zip(one, many, strict=True):
        for key in ("perplexity", "entropy", "confidence", "top1_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    pbar = np.load(ctx.artifact_dir / "mean_probs.npy")
    assert pbar.sum() == pytest.approx(1.0, abs=1e-4)
    summary = many[-1]
    assert summary["n_docs"] == 6 and 0 < summary["vocab_share_70"] < summary["vocab_share_90"] < 1
    original, _ = call(
        next_token,
        NextTokenParams(model=model, max_docs=3, per_document=False, prefix="original", stats_positions="all",
                        zero_eps=1e-7, entropy_aggregate="first_document", mean_probs_flush_every=500),
        load_lm,
    )  # fmt: skip
    assert len(original) == 1 and math.isfinite(original[0]["entropy"])


def test_output_diversity_reads_upstream_and_embeds(tiny_pair, tiny_encoder):
    comp_params = CompletionsParams(model=str(tiny_pair["base"]), prompt_set="factual", n_samples=6, max_new_tokens=10,
                                    max_prompts=2)
    _, comp_ctx = call(completions, comp_params, load_lm, seed=3)
    upstream = {"completions": [Upstream("completions", "r1", comp_params.model_dump(), comp_ctx.artifact_dir)]}
    params = OutputDiversityParams(model=comp_params.model, prompt_set="factual", embedder=str(tiny_encoder),
                                   max_num_words=5)
    rows, _ = call(output_diversity, params, load_embedder, upstream=upstream)
    assert [r["prompt_index"] for r in rows] == [0, 1]
    assert all(r["n_texts"] == 6 and r["mean_words"] <= 5 for r in rows)
    assert set(compute.metric_names()) <= set(rows[0])
    assert all(math.isfinite(r["cosine_similarity"]) and math.isfinite(r["vendi_cosine"]) for r in rows)
    assert rows[0]["result_key"] == "factual"
    swapped, _ = call(
        output_diversity, params.model_copy(update={"swap_creative_factual_keys": True, "embedder": None}),
        load_embedder, upstream=upstream,
    )  # fmt: skip
    assert swapped[0]["result_key"] == "creative" and math.isnan(swapped[0]["cosine_similarity"])


def test_must_show_narrow_finetuning_collapses_diversity_and_entropy(tiny_pair):
    # A tiny model fine-tuned hard on one narrow text has lower next-token entropy on held-out text and
    # less diverse completions (at every temperature) than its base, measured by the family's three
    # stages chained as the sweep chains them (next_token; completions -> output_diversity).
    entropy, diversity = {}, {}
    for name, path in tiny_pair.items():
        rows, _ = call(next_token, NextTokenParams(model=str(path), per_document=False), load_lm)
        entropy[name] = rows[-1]["entropy"]
        for temperature in (0.7, 1.0, 1.3):
            comp = CompletionsParams(model=str(path), prompt_set="creative", temperature=temperature, n_samples=10,
                                     max_new_tokens=24)
            _, comp_ctx = call(completions, comp, load_lm, seed=1)
            upstream = {"completions": [Upstream("completions", "r", comp.model_dump(), comp_ctx.artifact_dir)]}
            div = OutputDiversityParams(model=str(path), temperature=temperature, embedder=None, order_q=(2,))
            rows, _ = call(output_diversity, div, load_embedder, upstream=upstream)
            diversity[name, temperature] = {k: np.mean([r[k] for r in rows])
                                            for k in ("distinct_2", "vendi_jaccard_2", "selfBleuSmoothed")}
    assert entropy["narrow"] < entropy["base"] - 1.0, entropy
    for temperature in (0.7, 1.0, 1.3):
        base, narrow = diversity["base", temperature], diversity["narrow", temperature]
        assert narrow["distinct_2"] < base["distinct_2"], (temperature, base, narrow)
        assert narrow["vendi_jaccard_2"] < base["vendi_jaccard_2"], (temperature, base, narrow)
        assert narrow["selfBleuSmoothed"] > base["selfBleuSmoothed"], (temperature, base, narrow)


def test_finetune_reports_its_curve_and_saves_the_model_the_builtin_recipe_makes(tiny_pair, tmp_path):
    # the in-sweep fine-tune of the built-in recipe (tasks/diversity/models.py) gives the built-in model
    from tasks.common.models import load_causal_lm
    from tasks.diversity.models import RECIPES, model_path
    from tasks.diversity.task import FinetuneParams, finetune, model_location

    base, text_key, steps, lr = RECIPES["tiny-gpt2-narrow"]
    params = FinetuneParams(base_model=base, text=text_key, steps=steps, lr=lr, eval_every=25)
    ctx = local_context(seed=0, root=tmp_path)
    row = finetune(params, ctx)
    assert [r["step"] for r in ctx.reports] == [25, 50, 75, 100]
    narrow = [r["narrow_loss"] for r in ctx.reports]
    assert narrow[-1] < 0.5 * row["narrow_loss_before"] and row["narrow_loss"] == narrow[-1]
    assert row["general_loss"] > row["general_loss_before"]  # the model narrows: general text gets harder
    saved, _ = load_causal_lm(ctx.artifact_dir / "model")
    builtin, _ = load_causal_lm(model_path("tiny-gpt2-narrow"))
    for (name, mine), theirs in zip(saved.state_dict().items(), builtin.state_dict().values(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5), name
    downstream = local_context(seed=0, upstream={"tune": [Upstream("tune", "r1", {}, ctx.artifact_dir)]})
    assert model_location("upstream:tune", downstream) == str(ctx.artifact_dir / "model")
    with pytest.raises(FileNotFoundError, match="saved no model"):
        model_location("upstream:tune", local_context(upstream={"tune": [Upstream("tune", "r1", {}, tmp_path)]}))
    with pytest.raises(ValueError, match=r"neither 'narrow', 'corpus' nor an existing \.txt file"):
        finetune(FinetuneParams(text="narow", steps=1), local_context(root=tmp_path))
