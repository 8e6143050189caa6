"""editing.finetune end to end on a tiny model: success rises, degradation is measured, nothing leaks."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.context import local_context
from tasks.editing import data
from tasks.editing.ops import finetune
from tasks.editing.ops import losses as compute
from tasks.editing.task import FinetuneParams, _split_general
from tasks.editing.task import finetune as finetune_task


def _run(setup, **kwargs):
    params = FinetuneParams(**kwargs)
    ctx = local_context(seed=params.seed)
    ctx.setup = setup
    return finetune_task(params, ctx)


def _aggregate(rows):
    (agg,) = [r for r in rows if r["level"] == "aggregate"]
    return agg


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, snapshot) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(torch.equal(state[k], snapshot[k]) for k in snapshot)


@pytest.fixture(scope="module")
def full_run(tiny_lm):
    before = _snapshot(tiny_lm[0])
    rows = _run(tiny_lm, method="full", lr=3e-3, epochs=8, grad_acc_steps=1)
    return rows, before


def test_finetuning_raises_success_on_the_eval_set(full_run):
    # canonical examples ("X is located in the city of" -> Y) raise success on the paraphrased eval
    # prompts, which the model never trained on
    rows, _ = full_run
    agg = _aggregate(rows)
    assert agg["success_before"] == 0.0
    assert agg["success"] >= 0.25
    assert agg["success_gain"] == agg["success"] - agg["success_before"]
    assert agg["train_loss_final"] < 0.5 * agg["train_loss_initial"]
    examples = [r for r in rows if r["level"] == "example" and r["example_set"] == "eval"]
    assert len(examples) == agg["n_eval"] == len(data.BUILTIN_FACTS) // 2
    assert sum(r["example_success"] for r in examples) / len(examples) == agg["success"]
    # success is the verdict on the summed suffix NLL: p(suffix) >= 0.2
    for r in examples:
        assert r["example_success"] == (r["example_nll"] <= -math.log(0.2))
        assert r["example_nll"] < r["example_nll_before"]


def test_degradation_is_measured_on_held_out_general_text(full_run, tiny_lm):
    # general_loss_before is the unedited model's per-token NLL on the held-out general paragraphs
    # (not trained on during fine-tuning), recomputed here independently; the edit raises it
    rows, _ = full_run
    agg = _aggregate(rows)
    model, tok = tiny_lm
    general, _ = _split_general(list(data.BUILTIN_GENERAL_TEXT), 100, 100, builtin=True)
    total = count = 0
    for text in general:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        total += -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)))
        count += len(ids) - 1
    assert agg["general_tokens"] == count
    assert agg["general_loss_before"] == pytest.approx(total / count, rel=1e-5)
    assert agg["general_loss"] > agg["general_loss_before"]
    assert agg["degradation_general"] == pytest.approx(agg["general_loss"] / agg["general_loss_before"] - 1)
    assert agg["degradation_general"] > 0.01
    assert math.isfinite(agg["degradation_target"]) and agg["targeted_loss"] != agg["targeted_loss_before"]
    hard = [r for r in rows if r["level"] == "example" and r["example_set"] == "hard_negative"]
    assert len(hard) == agg["n_hard_negative"] > 0
    assert agg["hard_negative_delta"] == pytest.approx(agg["hard_negative_nll"] - agg["hard_negative_nll_before"])
    n_e, n_h = agg["n_eval"], agg["n_hard_negative"]
    held = sum(r["example_success"] for r in hard)
    assert agg["success_hard_neg"] == pytest.approx((agg["success"] * n_e + held) / (n_e + n_h))


def test_no_weight_leak_across_runs(full_run, tiny_lm):
    # the shared setup model is untouched by a run, and the same run twice gives the same rows
    rows, before = full_run
    assert _same(tiny_lm[0], before)
    assert all(p.grad is None for p in tiny_lm[0].parameters())
    again = _run(tiny_lm, method="full", lr=3e-3, epochs=8, grad_acc_steps=1)
    assert _aggregate(again)["success"] == _aggregate(rows)["success"]
    assert _aggregate(again)["general_loss"] == pytest.approx(_aggregate(rows)["general_loss"], rel=1e-6)
    assert _same(tiny_lm[0], before)


def test_layers_method_trains_only_the_chosen_blocks(tiny_lm):
    model, tok = tiny_lm
    trained = finetune.prepare_model(model, "layers", trainable_layers=[1])
    assert finetune.trainable_parameter_count(trained) == sum(p.numel() for p in trained.transformer.h[1].parameters())
    examples = data.load_dataset("facts", "val").train
    finetune.train(trained, tok, examples, finetune.TrainConfig("good", lr=1e-3, epochs=1, max_length=64), "cpu")
    new, old = trained.state_dict(), model.state_dict()
    changed = {k for k in old if not torch.equal(new[k], old[k])}
    assert changed and all(k.startswith("transformer.h.1.") for k in changed)


def test_lora_trains_adapters_on_mlp_projections_only(tiny_lm):
    model, tok = tiny_lm
    trained = finetune.prepare_model(model, "lora", trainable_layers=[0, 1], lora_rank=2)
    names = [n for n, p in trained.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".mlp." in n for n in names)
    d, hidden = model.config.n_embd, 4 * model.config.n_embd
    assert finetune.trainable_parameter_count(trained) == 2 * 2 * (2 * (d + hidden))  # layers x mats x r(in+out)
    examples = data.load_dataset("facts", "val").train
    history = finetune.train(
        trained, tok, examples, finetune.TrainConfig("good", lr=1e-2, epochs=3, grad_acc_steps=1, max_length=64), "cpu"
    )
    assert history.train_loss[-1] < history.train_loss[0]
    merged = trained.merge_and_unload()
    assert not torch.equal(merged.transformer.h[0].mlp.c_fc.weight, model.transformer.h[0].mlp.c_fc.weight)
    assert torch.equal(merged.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)


def test_league_mode_reports_the_last_epoch_inside_the_ball(tiny_lm):
    # with league eps the reported epoch is the last whose general loss < G_0 (1 + eps); a huge eps
    # admits the last epoch, a tiny one falls back to epoch 0 (no edit: success equals before)
    loose = _aggregate(_run(tiny_lm, method="full", lr=3e-3, epochs=3, grad_acc_steps=1, league=10.0))
    assert loose["epoch_selected"] == 3
    tight = _aggregate(_run(tiny_lm, method="full", lr=3e-3, epochs=3, grad_acc_steps=1, league=1e-9))
    assert tight["epoch_selected"] == 0
    assert tight["success"] == tight["success_before"] and tight["degradation_general"] == 0.0


def test_kl_regulariser_limits_degradation(tiny_lm):
    # the KL term (weight w, on general chunks disjoint from G) pulls the edited model towards the original
    plain = _aggregate(_run(tiny_lm, method="full", lr=3e-3, epochs=3, grad_acc_steps=1))
    kl = _aggregate(_run(tiny_lm, method="full", lr=3e-3, epochs=3, grad_acc_steps=1, kl_weight=1.0))
    assert kl["degradation_general"] < plain["degradation_general"]


def test_pair_datasets_on_the_real_files(tiny_lm):
    # the balance (gender) and good-v-bad (verb) paths run on the original files, val and test
    try:
        data.data_dir()
    except FileNotFoundError:
        pytest.skip("canonical_examples data not present")
    for dataset, split in (("gender", "val"), ("verb", "test"), ("country", "test")):
        rows = _run(
            tiny_lm, dataset=dataset, split=split, method="lora", trainable_layers=[1], lr=1e-3, epochs=1,
            max_train=3, max_eval=4, max_hard_negative=2, general_text="val100", general_docs=2, kl_docs=1,
            max_length=64,
        )
        agg = _aggregate(rows)
        assert agg["n_eval"] == 4 and agg["n_hard_negative"] == 2 and agg["n_train"] == 3
        assert all(math.isfinite(agg[k]) for k in ("success", "degradation_general", "degradation_target"))
        pair = [r for r in rows if r["level"] == "example" and r["example_set"] == "eval"]
        assert all((r["example_nll2"] is not None) == (dataset != "country") for r in pair)
        stats = [r["example_statistic"] for r in pair]
        if dataset == "verb":
            assert stats == pytest.approx([r["example_nll"] - r["example_nll2"] for r in pair])
        if dataset == "gender":
            assert stats == pytest.approx([abs(r["example_nll"] - r["example_nll2"]) for r in pair])


def test_params_validate_by_name():
    with pytest.raises(ValueError, match="method"):
        FinetuneParams(method="rome")  # senses is a method since the Backpack landed
    with pytest.raises(ValueError, match="lr"):
        FinetuneParams(lr=0)
    with pytest.raises(ValueError, match="out of range"):
        finetune.normalise_layers([5], 2)
    assert compute.LOSS_TYPES == ("good", "bad", "balance", "good-v-bad")


def test_lora_runs_are_deterministic_per_seed(tiny_lm):
    # LoRA's random init and the batch order come from the run's seed only
    kwargs = dict(method="lora", trainable_layers=[1], lora_rank=2, lr=1e-2, epochs=2, grad_acc_steps=1)
    first, again = _aggregate(_run(tiny_lm, seed=1, **kwargs)), _aggregate(_run(tiny_lm, seed=1, **kwargs))
    other = _aggregate(_run(tiny_lm, seed=2, **kwargs))
    assert first["general_loss"] == again["general_loss"] and first["train_loss_final"] == again["train_loss_final"]
    assert first["train_loss_final"] != other["train_loss_final"]


def test_the_trainable_copy_starts_as_the_unedited_model(tiny_lm):
    # epoch 0's evaluation is the unedited model's (not evaluated again): each method's copy must give
    # the same numbers before training (zero LoRA B, copied weights)
    from tasks.editing.ops import evaluation

    model, tokenizer = tiny_lm
    sets = evaluation.build_eval_sets(tokenizer, data.load_dataset("facts", "val"), ["The city is old."] * 2, 64,
                                      None, None, 16)
    before = evaluation.evaluate(model, tokenizer, sets, torch.device("cpu"))
    for method in ("full", "layers", "lora"):
        copy = finetune.prepare_model(model, method, [1], 2, 8.0, 0.0, 0.5, seed=0)
        start = evaluation.evaluate(copy, tokenizer, sets, torch.device("cpu"))
        assert start.general_loss == before.general_loss and start.targeted_loss == before.targeted_loss, method
        assert (start.success == before.success).all(), method


def test_evaluate_every_thins_the_curve_not_the_result(tiny_lm):
    # evaluations during training only feed ctx.report: fewer of them leave the run's rows unchanged
    def run(every):
        params = FinetuneParams(method="full", lr=3e-3, epochs=3, grad_acc_steps=1, evaluate_every=every)
        ctx = local_context(seed=0)
        ctx.setup = tiny_lm
        return finetune_task(params, ctx), [r["step"] for r in ctx.reports]

    (every_rows, every_steps), (none_rows, none_steps), (two_rows, two_steps) = run(1), run(0), run(2)
    assert (every_steps, none_steps, two_steps) == ([0, 1, 2, 3], [0, 3], [0, 2, 3])
    assert every_rows == none_rows == two_rows
    with pytest.raises(ValueError, match="evaluate_every must be 1"):
        FinetuneParams(league=1e-3, evaluate_every=0)
