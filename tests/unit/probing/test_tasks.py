"""The probing tasks called directly on the planted tiny model (must-show items of issue 11)."""

from __future__ import annotations

import pandas as pd
import torch

from orchestrator.context import local_context


def _ctx(model_tokenizer, seed=0):
    ctx = local_context(seed=seed)
    ctx.setup = model_tokenizer
    return ctx


def test_swap_changes_answer_to_the_others(planted_lm):
    from tasks.probing.task import EmbeddingSwapParams, embedding_swap

    model, _ = planted_lm
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = EmbeddingSwapParams(model="planted", token_a="cat", token_b="dog",
                                 variants=["space_lower", "bare_lower"],
                                 questions=["The cat is", "The dog is", "The bird is"], top_k=3)
    rows = pd.DataFrame(embedding_swap(params, _ctx(planted_lm)))
    answers = rows[rows.level == "answer"].set_index("question")
    assert answers.loc["The cat is", "answer_before"] == " red"
    assert answers.loc["The cat is", "answer_after"] == " blue"  # the dog's answer
    assert answers.loc["The dog is", "answer_after"] == " red"  # the cat's answer
    assert answers.loc["The bird is", "answer_after"] == " green"  # swapped tokens absent: unchanged
    assert not answers.loc["The bird is", "touched_in_input"]
    variants = rows[rows.level == "variant"].set_index("variant")
    assert variants.loc["space_lower", "ok"] and not variants.loc["bare_lower", "ok"]  # "cat" splits in 2
    assert variants.loc["bare_lower", "pieces_a"] == "c|at"
    assert bool(variants["tied_embeddings"].iloc[0])
    topk = rows[rows.level == "topk"]
    assert len(topk) == 3 * 2 * 3
    for key, value in model.state_dict().items():  # weights restored in finally
        assert torch.equal(value, saved[key]), key


def test_noise_mode_is_seeded_and_restores(planted_lm):
    from tasks.probing.task import EmbeddingSwapParams, embedding_swap

    params = EmbeddingSwapParams(model="planted", token_a="cat", token_b=None, mode="noise", noise_scale=8.0,
                                 questions=["The cat is"])
    a = embedding_swap(params, _ctx(planted_lm, seed=1))
    b = embedding_swap(params, _ctx(planted_lm, seed=1))
    assert a == b
    answer = next(r for r in a if r["level"] == "answer")
    assert answer["p_original_answer_after"] < answer["p_before"]


def test_noise_lowers_original_answer_monotonically_on_average(planted_lm):
    from tasks.probing.task import SubjectNoiseParams, subject_noise

    scales = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    params = SubjectNoiseParams(model="planted", questions=[f"The {a} is" for a in ("cat", "dog", "bird", "fish")],
                                subjects=["cat", "dog", "bird", "fish"], noise_scales=scales, samples=16)
    rows = pd.DataFrame(subject_noise(params, _ctx(planted_lm)))
    per_scale = rows[rows.level == "scale"].groupby("scale")["mean_p_original"].mean()
    assert list(per_scale.index) == scales
    values = per_scale.to_numpy()
    assert (values[1:] <= values[:-1] + 1e-9).all(), values  # non-increasing on average
    assert values[-1] < 0.5 * values[0], values
    clean = rows[(rows.level == "sample") & (rows.scale == 0.0)]
    assert (clean.rank_original == 0).all()
    assert ((clean.p_original - clean.p_clean).abs() < 1e-5).all()  # batched vs single forward: rounding
    assert set(rows.subject) == {"cat", "dog", "bird", "fish"}  # one subject per question, noised alone
    print("mean p(original answer) by noise scale:", dict(zip(scales, values.round(4), strict=True)))


def test_saliency_methods_baselines_and_swap(planted_lm):
    from tasks.probing.task import SaliencyParams, SwapSpec, saliency

    params = SaliencyParams(model="planted", questions=["The cat is"], answers=[" red"],
                            methods=["gradient_x_input", "integrated_gradients", "norm"],
                            baselines=["bos", "eos", "zero"], n_steps=20, swap=SwapSpec(token_a="cat", token_b="dog"))
    rows = pd.DataFrame(saliency(params, _ctx(planted_lm)))
    n_tokens = 3
    assert len(rows) == 2 * (1 + 3 + 1) * n_tokens
    assert set(rows.condition) == {"none", "swap"}
    p = rows.groupby("condition")["p_target"].first()
    assert p["swap"] < p["none"]  # " red" is the cat's answer: with the dog's embedding it drops
    ig = rows[(rows.method == "integrated_gradients") & (rows.condition == "none") & (rows.baseline == "zero")]
    assert ig.loc[ig.score.abs().idxmax(), "token"] in (" cat", " is")


def test_fact_injection_one_layer_trainable(planted_lm):
    from tasks.probing.task import FactInjectionParams, fact_injection

    model, _ = planted_lm
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = FactInjectionParams(model="planted", question="The mouse is", answer="yellow", trainable_layers=[1],
                                 lr=1e-3, max_steps=40)
    rows = pd.DataFrame(fact_injection(params, _ctx(planted_lm)))
    layers = rows[rows.level == "layer"]
    frozen = layers[layers.layer.isna() | (layers.layer == 0)]
    assert len(frozen) > 0 and (frozen.weight_change_norm == 0.0).all() and (frozen.grad_norm == 0.0).all()
    assert (layers[layers.layer == 1].weight_change_norm > 0).all()
    final = rows[rows.level == "final"].iloc[0]
    assert final.layer_set == "1"
    assert final.steps_to_learn is not None and final.steps_to_learn <= 40
    steps = rows[rows.level == "step"]
    assert steps.answered.iloc[-1] and not steps.answered.iloc[0]
    assert steps.p_answer.iloc[-1] > steps.p_answer.iloc[0]
    assert final.general_loss_after >= final.general_loss_before - 0.05
    print(f"one trainable layer: learned in {final.steps_to_learn} steps; general loss "
          f"{final.general_loss_before:.3f} -> {final.general_loss_after:.3f}")
    for key, value in model.state_dict().items():  # the setup model is untouched
        assert torch.equal(value, saved[key]), key


def test_fact_injection_all_layers_and_report(planted_lm, tmp_path):
    from tasks.probing.report import injection_table, report_injection, report_swap
    from tasks.probing.task import (
        EmbeddingSwapParams,
        FactInjectionParams,
        embedding_swap,
        fact_injection,
    )

    params = FactInjectionParams(model="planted", question="The mouse is", answer="yellow", lr=1e-3, max_steps=40)
    rows = fact_injection(params, _ctx(planted_lm))
    df = pd.DataFrame(rows)
    df["run_id"] = "r1"
    final = injection_table(df).iloc[0]
    assert final.layer_set == "all" and final.steps_to_learn is not None
    layers = df[df.level == "layer"]
    assert (layers.weight_change_norm > 0).all()  # every group moves
    items = report_injection(df, tmp_path)
    assert items[0].exists() and items[0].stat().st_size > 1000
    swap = pd.DataFrame(embedding_swap(EmbeddingSwapParams(model="planted", questions=["The cat is"]),
                                       _ctx(planted_lm)))
    table = report_swap(swap, tmp_path)[0]
    assert list(table.answer_after) == [" blue"]


def test_tasks_registered():
    import tasks.probing as family
    from orchestrator.registry import get_task

    assert set(family.TASKS) == {"probing.embedding_swap", "probing.subject_noise", "probing.saliency",
                                 "probing.fact_injection"}
    for name in family.TASKS:
        assert get_task(name).name == name


def test_report_hooks_resolve(planted_lm, tmp_path):
    import importlib

    import tasks.probing as family
    from tasks.probing.report import report_noise
    from tasks.probing.task import SubjectNoiseParams, subject_noise

    for target in family.REPORTS.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))
    rows = pd.DataFrame(subject_noise(SubjectNoiseParams(model="planted", questions=["The cat is"], subjects=["cat"],
                                                         noise_scales=[0.0, 4.0], samples=4), _ctx(planted_lm)))
    table = report_noise(rows, tmp_path)[0]
    assert list(table.scale) == [0.0, 4.0] and table.mean_p_original.iloc[1] < table.mean_p_original.iloc[0]



def test_rows_never_reuse_parameter_or_orchestrator_names(planted_lm):
    """Stored rows carry the run's params too: a row column may not shadow a parameter or a reserved name."""
    from orchestrator.schema import RESERVED_COLUMNS
    from tasks.probing import task as t

    runs = [
        (t.EmbeddingSwapParams(model="planted", questions=["The cat is"], mode="swap_noise"), t.embedding_swap),
        (t.SubjectNoiseParams(model="planted", questions=["The cat is"], subjects=["cat"], samples=2), t.subject_noise),
        (t.SaliencyParams(model="planted", questions=["The cat is"], n_steps=4,
                          swap=t.SwapSpec(token_a="cat", token_b="dog")), t.saliency),
        (t.FactInjectionParams(model="planted", question="The mouse is", answer="yellow", max_steps=2),
         t.fact_injection),
    ]
    for params, fn in runs:
        rows = fn(params, _ctx(planted_lm))
        columns = set().union(*(row.keys() for row in rows))
        assert not columns & (set(type(params).model_fields) | set(RESERVED_COLUMNS)), fn.__name__
        assert all(isinstance(v, (int, float, bool, str, type(None))) for row in rows for v in row.values())


def test_update_norm_heat_maps_share_one_labelled_colour_scale(tmp_path, monkeypatch):
    # Invariant: every run's heat map in one figure uses the same colour limits (the figure's min and max),
    # with one colour bar labelled with the plotted quantity.
    import tasks.common.figures as figures
    from tasks.probing.report import plot_update_norms

    rows = [{"status": "ok", "level": "layer", "run_id": run, "layer": layer, "step": step, "lr": lr,
             "update_norm": scale * (layer + 1) * (step + 1)}
            for run, lr, scale in (("a", 1e-3, 1.0), ("b", 1e-2, 10.0)) for layer in (0, 1) for step in range(3)]
    captured = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, dpi=110: captured.setdefault("fig", fig) and path)
    plot_update_norms(pd.DataFrame(rows), tmp_path / "norms.png")
    fig = captured["fig"]
    images = [image for ax in fig.axes for image in ax.get_images()]
    assert len(images) == 2 and {image.get_clim() for image in images} == {(1.0, 60.0)}
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "update norm"
