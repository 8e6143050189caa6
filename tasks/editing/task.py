"""Editing tasks: canonical-examples fine-tuning, ROME rank-one edits, causal tracing, the Backpack ensemble
and MEMIT (adapters only: params in `tasks.editing.params`, maths in `tasks.editing.ops`).

Weight edits never leak into the shared setup model: fine-tuning trains a deep copy (the setup model
stays the unedited reference for degradation and the KL regulariser); ROME and MEMIT edit the setup
model's weights in place inside a context manager that restores the exact original tensors in `finally`;
tracing only adds hooks, removed in `finally`. Derived read-only values (context templates, key second
moments) are memoised on the setup (`LMSetup.memo`), so runs sharing a setup compute them once.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.common.rows import uniform_rows as uniform_rows
from tasks.common.setup import LMSetup, lm_setup
from tasks.editing.ops.senses import OFFSETS_FILE as OFFSETS_FILE
from tasks.editing.ops.senses import load_offsets as load_offsets
from tasks.editing.params import (
    CausalTraceParams,
    EnsembleParams,
    FinetuneParams,
    MemitParams,
    RomeParams,
    TraceFact,
)

__all__ = ["CausalTraceParams", "EnsembleParams", "FinetuneParams", "MemitParams", "RomeParams", "TraceFact",
           "causal_trace", "ensemble", "finetune", "load", "memit_edit", "rome_edit"]


def load(params: Any, ctx: RunContext) -> LMSetup:
    """The model and tokenizer of `params.model` (a family built-in such as tiny-gpt2-facts or tiny-backpack,
    or any name tasks.common.models.load_causal_lm accepts), shared across runs of a worker, never edited."""
    from tasks.editing.models import load_model

    model, tokenizer = load_model(params.model, device=ctx.device)
    return LMSetup(model, tokenizer, ctx.device)


def _device(model) -> Any:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# editing.finetune


def _split_general(texts: list[str], general_docs: int, kl_docs: int, builtin: bool) -> tuple[list[str], list[str]]:
    if builtin:  # the built-in paragraphs are few: even ones for G, odd ones for R
        return texts[0::2][:general_docs], texts[1::2][:kl_docs]
    return texts[:general_docs], texts[general_docs : general_docs + kl_docs]


@task(
    "editing.finetune",
    params=FinetuneParams,
    version=2,
    setup=load,
    setup_keys=("model",),
    resources={"num_cpus": 1},
    smoke={"epochs": 1, "max_train": 1, "grad_acc_steps": 1, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2,
           "kl_docs": 2, "max_length": 64},
)
def finetune(params: FinetuneParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Fine-tune on canonical examples and evaluate out of distribution (Hewitt et al. 2024, arXiv 2402.06155).

    Success on the eval set (with and without hard negatives), degradation on targeted and general text
    vs the unedited model; per-example rows (level "example") and one aggregate row (level "aggregate").
    Evaluated (and `ctx.report`ed) every `evaluate_every` epochs and after the last (the original: every
    epoch); epoch 0 is the unedited model's evaluation (the copy starts equal: zero LoRA B, zero offsets).
    Without `league` the last epoch is reported; with `league` eps the last epoch with general loss
    < G_0 (1 + eps), as the original's score_of_last_valid_epoch. Methods, training and quirks:
    ops/finetune.py; metrics: ops/evaluation.py. Method "senses" (Backpack models): sense selection on the
    canonical examples against the KL texts as background, then trainable offsets only (ops/senses.py);
    the reported epoch's offsets are saved as sense_offsets.safetensors for editing.ensemble.
    """
    from tasks.editing import data
    from tasks.editing.ops import _arch, evaluation

    base, tokenizer = lm_setup(ctx, params, load)
    device = _device(base)
    dataset = data.load_dataset(params.dataset, params.split, params.data_dir, params.hard_negative_split)
    texts = data.general_texts(params.general_text, params.data_dir)
    general, kl_texts = _split_general(texts, params.general_docs, params.kl_docs, params.general_text == "builtin")
    max_length = min(params.max_length, _arch.max_positions(base))
    sets = evaluation.build_eval_sets(
        tokenizer, dataset, general, max_length, params.max_eval, params.max_hard_negative, params.eval_batch_size
    )
    before = evaluation.evaluate(base, tokenizer, sets, device)
    model, n_senses = _trainable_copy(params, base, tokenizer, dataset, kl_texts, max_length, device, ctx.seed)
    try:
        history, epoch, after, trainable = _train(params, ctx, model, base, tokenizer, dataset, sets, kl_texts,
                                                  max_length, device, n_senses, before)
    finally:
        del model
    rows = evaluation.comparison_rows(before, after, dataset.loss_type, params.hard_neg_tolerance)
    league_rows = evaluation.league_rows(before, history.evaluations, params.leagues) if params.leagues else []
    rows[-1].update(
        epoch_selected=epoch,
        train_loss_initial=history.train_loss[0],
        train_loss_final=history.train_loss[-1],
        optimizer_steps=sum(history.steps),
        trainable_params=trainable,
        n_train=len(dataset.train[: params.max_train]),
        n_senses_selected=n_senses,
    )
    return uniform_rows(rows + league_rows)


def _trainable_copy(params: FinetuneParams, base, tokenizer, dataset, kl_texts, max_length, device, seed):
    """(the model to train: a prepared deep copy of `base`, the number of selected senses or None)."""
    from tasks.common.nll import encode_texts
    from tasks.editing.ops import finetune as ft

    if params.method != "senses":
        model = ft.prepare_model(
            base, params.method, params.trainable_layers, params.lora_rank, params.lora_alpha,
            params.lora_dropout, params.lora_layer_fraction, seed=seed,
        )
        return model, None
    from tasks.editing.ops import senses

    if not hasattr(base, "sense_vectors"):
        raise ValueError("method senses needs a Backpack model (e.g. tiny-backpack, stanfordnlp/backpack-gpt2), "
                         f"got model={params.model!r}")
    background = senses.background_scores(base, encode_texts(tokenizer, kl_texts, max_length), device)
    pairs = senses.select_senses(
        base, tokenizer, dataset.train[: params.max_train], dataset.loss_type, background,
        params.senses_per_example, params.sense_lambda, max_length, device,
    )
    return senses.prepare_sense_model(base, pairs), len(pairs)


def _train(params: FinetuneParams, ctx: RunContext, model, base, tokenizer, dataset, sets, kl_texts, max_length,
           device, n_senses, before):
    """Train `model`; (history, the epoch reported, its evaluation, trainable parameter count). With senses,
    the offsets of the reported epoch are saved for editing.ensemble."""
    from tasks.common.nll import encode_texts
    from tasks.editing.ops import evaluation
    from tasks.editing.ops import finetune as ft
    from tasks.editing.ops.senses import save_offsets

    snapshots: list = []  # sense offsets after each epoch (saved for the ensemble)
    config = ft.TrainConfig(
        loss_type=dataset.loss_type, lr=params.lr, epochs=params.epochs, batch_size=params.batch_size,
        grad_acc_steps=params.grad_acc_steps, grad_acc_quirk=params.grad_acc_quirk,
        kl_weight=params.kl_weight, max_length=max_length, seed=ctx.seed,
    )
    kl_chunks = encode_texts(tokenizer, kl_texts, max_length) if params.kl_weight > 0 else []

    def per_epoch(m, epoch):
        if n_senses is not None:
            snapshots.append(m.sense_offsets.offsets.detach().cpu().clone())
        due = epoch == params.epochs or (params.evaluate_every > 0 and epoch % params.evaluate_every == 0)
        if epoch > 0 and not due:
            return None
        result = before if epoch == 0 else evaluation.evaluate(m, tokenizer, sets, device)  # no random draws
        ctx.report(step=epoch, success=float(result.success.mean()) if result.success.size else None,
                   targeted_loss=result.targeted_loss, general_loss=result.general_loss)
        return result

    history = ft.train(
        model, tokenizer, dataset.train[: params.max_train], config, device,
        reference=base, kl_chunks=kl_chunks, evaluate=per_epoch,
    )
    if params.league:
        losses = [r.general_loss for r in history.evaluations]
        epoch = evaluation.select_league_epoch(losses, params.league)
        after = history.evaluations[epoch]
    else:
        epoch = params.epochs
        after = history.evaluations[-1]  # the last epoch is always evaluated
    trainable = ft.trainable_parameter_count(model)
    if n_senses is not None:
        save_offsets(ctx.artifact_dir, model.sense_offsets.pairs, snapshots[epoch])
    return history, epoch, after, trainable


# --------------------------------------------------------------------------------------------------
# editing.rome

# the params handed unchanged to the edit's hyperparameters (rome.RomeHparams, memit.MemitHparams)
ROME_HPARAMS = {"v_num_grad_steps", "v_lr", "v_weight_decay", "kl_factor", "clamp_norm_factor", "mom2_adjustment"}
MEMIT_HPARAMS = {"v_num_grad_steps", "v_lr", "v_weight_decay", "kl_factor", "clamp_norm_factor", "mom2_update_weight",
                 "fork_anti_prompts", "fork_length_norm", "fork_negative_stop"}


@task("editing.rome", params=RomeParams, version=1, setup=load, setup_keys=("model",), resources={"num_cpus": 1},
      smoke={"v_num_grad_steps": 2, "template_lengths": [(3, 1)], "cov_docs": 4, "max_length": 64})
def rome_edit(params: RomeParams, ctx: RunContext) -> list[dict[str, Any]]:
    """ROME rank-one edit of one MLP layer (Meng et al. 2022), undone before returning.

    Probabilities of the new and true object before/after on the rewrite, paraphrase and neighborhood
    prompts (CounterFact-style, P = exp(-mean token NLL)), plus an aggregate row (efficacy, paraphrase
    and neighborhood scores, general-text loss change). The edit is undone before returning. Maths and
    simplifications: ops/rome.py.
    """
    from tasks.common.nll import encode_texts, text_loss
    from tasks.editing import data
    from tasks.editing.ops import _arch, rome
    from tasks.editing.ops.counterfact import candidate_probs, prompt_rows, rome_aggregate

    setup = lm_setup(ctx, params, load)
    model, tokenizer = setup
    device = _device(model)
    n_layers = _arch.n_layers(model)
    layer = params.layer if params.layer is not None else n_layers // 3
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} out of range for a model with {n_layers} layers")
    request = data.rome_request(params, model, tokenizer, device)
    max_length = min(params.max_length, _arch.max_positions(model))
    templates = params.context_templates or _templates(setup, params.template_lengths, ctx.seed)
    cov_texts = data.general_texts(params.cov_text, params.data_dir)[: params.cov_docs]
    general_chunks = encode_texts(tokenizer, cov_texts, max_length)
    cov_inv = None
    if params.mom2_adjustment:
        cov_inv = setup.cached(
            ("cov_inv", layer, params.cov_text, params.cov_docs, params.cov_ridge, max_length),
            lambda: rome.inverse_second_moment(rome.second_moment(model, layer, general_chunks, device),
                                               params.cov_ridge),
        )
    hp = rome.RomeHparams(layer=layer, **params.model_dump(include=ROME_HPARAMS))
    update = rome.compute_rome_update(
        model, tokenizer, hp, request["prompt"], request["subject"], request["target_new"], templates, cov_inv, device
    )
    prompts = request["prompts"]
    before = candidate_probs(model, tokenizer, prompts, request, max_length, device)
    general_before, _ = text_loss(model, general_chunks, device)
    with rome.applied_update(model, update) as delta:
        after = candidate_probs(model, tokenizer, prompts, request, max_length, device)
        general_after, _ = text_loss(model, general_chunks, device)
        update_norm = float(delta.norm())
    rows = prompt_rows(prompts, before, after)
    rows.append(rome_aggregate(rows, update, update_norm, general_before, general_after, request, layer))
    return uniform_rows(rows)


def _templates(setup: LMSetup, template_lengths, seed: int) -> list[str]:
    """ROME's sampled context templates, memoised on the setup (a read-only value of the unedited model)."""
    from tasks.editing.ops import rome

    return setup.cached(
        ("templates", tuple(map(tuple, template_lengths)), seed),
        lambda: rome.sample_context_templates(setup.model, setup.tokenizer, template_lengths, seed,
                                              _device(setup.model)),
    )


# --------------------------------------------------------------------------------------------------
# editing.causal_trace


# version 2: the noise std counts every subject-token occurrence (1: unique ids)
@task("editing.causal_trace", params=CausalTraceParams, version=2, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"fact_indices": [0], "sites": ["hidden", "mlp"], "window": 1, "samples": 2, "only_correct": False})
def causal_trace(params: CausalTraceParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Causal tracing (Meng et al. 2022): restored p(answer) per (fact, site, layer, token).

    After corrupting the subject embeddings; rows of level "cell", plus one level "fact" row per fact
    (clean and corrupted probabilities, whether it was traced). Definitions and defaults: ops/trace.py.
    """
    from tasks.editing import data
    from tasks.editing.ops import _arch, trace

    model, tokenizer = lm_setup(ctx, params, load)
    if params.facts:
        facts = list(params.facts)
    elif params.facts_file:
        facts = [TraceFact(prompt=p, subject=s, target=t) for p, s, t in data.read_trace_facts(params.facts_file)]
    else:
        facts = [TraceFact(prompt=f.prompt, subject=f.subject, target=f.target_true) for f in data.BUILTIN_FACTS]
    indices = params.fact_indices if params.fact_indices is not None else list(range(len(facts)))
    for i in indices:
        if not 0 <= i < len(facts):
            raise ValueError(f"fact_indices: {i} out of range for {len(facts)} facts")
    scale = params.noise_scale or trace.embedding_noise_scale(
        model, tokenizer, [f.subject for f in facts], params.noise_factor
    )
    d = _arch.embedding(model).weight.shape[1]
    rows: list[dict[str, Any]] = []
    options = params.model_dump(include={"sites", "window", "samples", "noise_seed", "answer", "only_correct",
                                         "reuse_prefix"})
    for i in indices:
        fact = facts[i]
        rows += trace.fact_rows(model, tokenizer, i, fact.prompt, fact.subject, fact.target, scale, d, **options)
    return uniform_rows(rows)


# --------------------------------------------------------------------------------------------------
# editing.ensemble

_LARGE: dict[tuple[str, str], Any] = {}  # larger models, loaded once per worker process


# version 2: combined over the larger model's vocabulary, before-edit scores and G_0 on the sliced larger model
@task("editing.ensemble", params=EnsembleParams, version=2, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"large_model": "tiny-backpack", "beta_step": 0.5, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2,
             "kl_docs": 2, "max_length": 64},
      smoke_upstream={"finetune": ("editing.finetune", {
          "model": "tiny-backpack", "method": "senses", "epochs": 1, "max_train": 1, "grad_acc_steps": 1,
          "senses_per_example": 2, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2, "kl_docs": 2,
          "max_length": 64})})
def ensemble(params: EnsembleParams, ctx: RunContext) -> list[dict[str, Any]]:
    """A sense-fine-tuned Backpack ensembled with a larger LM (Hewitt et al. 2024): beta
    searched down from 1 by 0.1 until general loss < (1 + league) x the larger model's; success, hard
    negatives and degradation of the ensemble vs the larger model alone, both over the larger model's
    vocabulary (the tokenizer's ids, without logit padding, as the original). Maths: ops/ensemble.py."""
    import torch

    from tasks.editing import data
    from tasks.editing.models import load_model
    from tasks.editing.ops import _arch, evaluation
    from tasks.editing.ops.ensemble import EnsembleLM, search_beta
    from tasks.editing.ops.senses import prepare_sense_model

    backpack, tokenizer = lm_setup(ctx, params, load)
    device = _device(backpack)
    key = (params.large_model, str(device))
    if key not in _LARGE:
        _LARGE[key] = load_model(params.large_model, device=str(device))[0]
    large = _LARGE[key]
    path = params.offsets_path if params.offsets_path is not None else ctx.upstream_one().artifact_dir / OFFSETS_FILE
    pairs, offsets = load_offsets(path)
    edited = prepare_sense_model(backpack, pairs)
    with torch.no_grad():
        edited.sense_offsets.offsets.copy_(offsets.to(device))
    dataset = data.load_dataset(params.dataset, params.split, params.data_dir, params.hard_negative_split)
    texts = data.general_texts(params.general_text, params.data_dir)
    general, _ = _split_general(texts, params.general_docs, params.kl_docs, params.general_text == "builtin")
    max_length = min(params.max_length, _arch.max_positions(backpack), _arch.max_positions(large))
    sets = evaluation.build_eval_sets(
        tokenizer, dataset, general, max_length, params.max_eval, params.max_hard_negative, params.eval_batch_size
    )
    vocab = tokenizer.vocab_size  # the larger model's vocabulary (shared tokenizer), without logit padding
    found = search_beta(large, edited, sets.general_chunks, params.league, device, vocab_size=vocab,
                        start=params.beta_start, step=params.beta_step)
    before = evaluation.evaluate(EnsembleLM(large, edited, 0.0, vocab), tokenizer, sets, device)
    after = evaluation.evaluate(EnsembleLM(large, edited, found.beta, vocab), tokenizer, sets, device)
    rows = evaluation.comparison_rows(before, after, dataset.loss_type, params.hard_neg_tolerance)
    rows[-1].update(method="ensemble", beta=found.beta, betas_tried=len(found.tried), n_senses_selected=len(pairs))
    return uniform_rows(rows)


# --------------------------------------------------------------------------------------------------
# editing.memit


@task("editing.memit", params=MemitParams, version=1, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "layers": [0], "v_num_grad_steps": 2, "template_lengths": [(3, 1)], "cov_docs": 4,
             "max_train": 1, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2, "max_length": 64})
def memit_edit(params: MemitParams, ctx: RunContext) -> list[dict[str, Any]]:
    """MEMIT (Meng et al. 2023) of all canonical examples of a split in one batch, evaluated like
    fine-tuning (success, hard negatives, degradation vs the unedited model), as the canonical-examples
    paper's baseline. The edit is undone before returning. Maths and simplifications: ops/memit.py."""
    from tasks.common.nll import encode_texts
    from tasks.editing import data
    from tasks.editing.ops import _arch, evaluation, memit, rome

    setup = lm_setup(ctx, params, load)
    model, tokenizer = setup
    device = _device(model)
    n_layers = _arch.n_layers(model)
    layers = params.layers if params.layers is not None else list(range(max(1, math.ceil(n_layers / 3))))
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layers: {layer} out of range for a model with {n_layers} layers")
    dataset = data.load_dataset(params.dataset, params.split, params.data_dir, params.hard_negative_split)
    texts = data.general_texts(params.general_text, params.data_dir)
    max_length = min(params.max_length, _arch.max_positions(model))
    sets = evaluation.build_eval_sets(tokenizer, dataset, texts[: params.general_docs], max_length,
                                      params.max_eval, params.max_hard_negative, params.eval_batch_size)
    cov_chunks = encode_texts(tokenizer, texts[: params.cov_docs], max_length)
    covs = {layer: setup.cached(("cov", layer, params.general_text, params.cov_docs, max_length),
                                partial(rome.second_moment, model, layer, cov_chunks, device))
            for layer in layers}
    templates = params.context_templates or _templates(setup, params.template_lengths, ctx.seed)
    requests = data.memit_requests(params, dataset)
    hp = memit.MemitHparams(layers=tuple(layers), loss_type=dataset.loss_type,
                            **params.model_dump(include=MEMIT_HPARAMS))
    before = evaluation.evaluate(model, tokenizer, sets, device)
    result = memit.compute_memit(model, tokenizer, requests, hp, templates, covs, device)
    with memit.applied_deltas(model, result.deltas):
        after = evaluation.evaluate(model, tokenizer, sets, device)
    rows = evaluation.comparison_rows(before, after, dataset.loss_type, params.hard_neg_tolerance)
    degradation = rows[-1]["degradation_general"]
    rows[-1].update(
        method="memit", n_requests=len(requests), edit_layers=",".join(map(str, layers)),
        z_loss_mean=sum(result.z_loss) / len(result.z_loss),
        update_norm=float(sum(d.norm() ** 2 for d in result.deltas.values()) ** 0.5),
        in_league=None if params.league is None else float(degradation < params.league),
    )
    return uniform_rows(rows)
