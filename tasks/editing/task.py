"""Editing tasks: canonical-examples fine-tuning, ROME rank-one edits, causal tracing (adapters only).

Weight edits never leak into the shared setup model: fine-tuning trains a deep copy (the setup model
stays the unedited reference for degradation and the KL regulariser); ROME edits the setup model's
weight in place inside a context manager that restores the exact original tensor in `finally`; tracing
only adds hooks, removed in `finally`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.context import RunContext
from orchestrator.registry import TaskParams, task

# --------------------------------------------------------------------------------------------------
# setup


def load_model(params: Any, ctx: RunContext):
    """(model, tokenizer) of `params.model` (a family built-in such as tiny-gpt2-facts, or any name
    tasks.common.models.load_causal_lm accepts), shared across runs of a worker, never edited in place."""
    from tasks.editing.models import load_model as load

    return load(params.model, device=ctx.device)


def _model_and_tokenizer(params: Any, ctx: RunContext):
    return ctx.setup if ctx.setup is not None else load_model(params, ctx)


def _device(model) -> Any:
    return next(model.parameters()).device


def uniform_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with the same columns (union, first-seen order; None where a level has no value): one
    stable schema per task, whatever level comes first."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key) for key in columns} for row in rows]


# per-model caches of derived, read-only values (templates, key statistics): keyed weakly on the model
_CACHE: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def _cached(model, key: tuple, build):
    store = _CACHE.setdefault(model, {})
    if key not in store:
        store[key] = build()
    return store[key]


# --------------------------------------------------------------------------------------------------
# editing.finetune


class FinetuneParams(TaskParams):
    model: str = "tiny-gpt2"
    dataset: str = "facts"  # country | company | gender | temporal | stereoset | verb | facts (built-in)
    split: Literal["val", "test"] = "val"
    method: Literal["full", "layers", "lora", "senses"] = "full"  # senses: Backpack models only
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(1, ge=1)
    grad_acc_steps: int = Field(5, ge=1)
    grad_acc_quirk: bool = False  # True: the original's zero_grad-every-batch accumulation
    kl_weight: float = Field(0.0, ge=0)  # the original sweeps draw 10^U(-1, 0)
    trainable_layers: list[int] | None = None  # method layers (default: last layer) or LoRA's block
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_layer_fraction: float = Field(0.5, gt=0, le=1)  # the original's block rule when no trainable_layers
    senses_per_example: int = Field(8, ge=1)  # k of the sense selection (original sweeps: U{5..11})
    sense_lambda: float = Field(1000.0, ge=0)  # lambda of S = A - lambda B (country: 10^U(2, 3.5))
    league: float | None = Field(None, gt=0)  # evaluate every epoch, report the last epoch inside the ball
    leagues: list[float] | None = None  # also report rows (level "league") for each of these balls, one run
    general_text: str = "builtin"  # builtin | val100 | path to a jsonl with `text`
    general_docs: int = Field(100, ge=1)  # texts of general_text for degradation G
    kl_docs: int = Field(100, ge=1)  # the next texts, for the KL regulariser R
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_hard_negative: int | None = Field(None, ge=1)
    hard_negative_split: Literal["val", "test"] | None = None  # "val" on test = the original's quirk
    hard_neg_tolerance: float = Field(math.log(1.5), ge=0)
    max_length: int = Field(512, ge=8)
    eval_batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    seed: int = 0


def _split_general(texts: list[str], general_docs: int, kl_docs: int, builtin: bool) -> tuple[list[str], list[str]]:
    if builtin:  # the built-in paragraphs are few: even ones for G, odd ones for R
        return texts[0::2][:general_docs], texts[1::2][:kl_docs]
    return texts[:general_docs], texts[general_docs : general_docs + kl_docs]


@task(
    "editing.finetune",
    params=FinetuneParams,
    version=2,
    setup=load_model,
    setup_keys=("model",),
    resources={"num_cpus": 1},
    smoke={"epochs": 1, "max_train": 1, "grad_acc_steps": 1, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2,
           "kl_docs": 2, "max_length": 64},
)
def finetune(params: FinetuneParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Fine-tune on canonical examples and evaluate out of distribution (Hewitt et al. 2024, arXiv 2402.06155).

    Success on the eval set (with and without hard negatives), degradation on targeted and general text
    vs the unedited model; per-example rows (level "example") and one aggregate row (level "aggregate").
    Without `league` the model after the last epoch is evaluated (epochs is a hyperparameter); with
    `league` eps every epoch is evaluated and the last epoch with general loss < G_0 (1 + eps) is
    reported, as the original's score_of_last_valid_epoch. Methods, training and quirks: finetune.py;
    metrics: evaluation.py. Method "senses" (Backpack models): sense selection on the canonical
    examples against the KL texts as background, then trainable offsets only (senses.py); the offsets
    of the reported epoch are saved as sense_offsets.safetensors for editing.ensemble.
    """
    from tasks.editing import _arch, compute, data, evaluation
    from tasks.editing import finetune as ft

    base, tokenizer = _model_and_tokenizer(params, ctx)
    device = _device(base)
    dataset = data.load_dataset(params.dataset, params.split, params.data_dir, params.hard_negative_split)
    texts = data.general_texts(params.general_text, params.data_dir)
    general, kl_texts = _split_general(texts, params.general_docs, params.kl_docs, params.general_text == "builtin")
    max_length = min(params.max_length, _arch.max_positions(base))
    sets = evaluation.build_eval_sets(
        tokenizer, dataset, general, max_length, params.max_eval, params.max_hard_negative, params.eval_batch_size
    )
    before = evaluation.evaluate(base, tokenizer, sets, device)

    n_senses = None
    if params.method == "senses":
        from tasks.editing import senses

        if not hasattr(base, "sense_vectors"):
            raise ValueError("method senses needs a Backpack model (e.g. tiny-backpack, stanfordnlp/backpack-gpt2), "
                             f"got model={params.model!r}")
        background = senses.background_scores(base, compute.encode_texts(tokenizer, kl_texts, max_length), device)
        pairs = senses.select_senses(
            base, tokenizer, dataset.train[: params.max_train], dataset.loss_type, background,
            params.senses_per_example, params.sense_lambda, max_length, device,
        )
        model = senses.prepare_sense_model(base, pairs)
        n_senses = len(pairs)
    else:
        model = ft.prepare_model(
            base, params.method, params.trainable_layers, params.lora_rank, params.lora_alpha,
            params.lora_dropout, params.lora_layer_fraction, seed=ctx.seed,
        )
    snapshots: list = []  # sense offsets after each epoch (saved for the ensemble)
    try:
        config = ft.TrainConfig(
            loss_type=dataset.loss_type, lr=params.lr, epochs=params.epochs, batch_size=params.batch_size,
            grad_acc_steps=params.grad_acc_steps, grad_acc_quirk=params.grad_acc_quirk,
            kl_weight=params.kl_weight, max_length=max_length, seed=ctx.seed,
        )
        kl_chunks = compute.encode_texts(tokenizer, kl_texts, max_length) if params.kl_weight > 0 else []
        def per_epoch(m, epoch):
            if n_senses is not None:
                snapshots.append(m.sense_offsets.offsets.detach().cpu().clone())
            result = evaluation.evaluate(m, tokenizer, sets, device)
            ctx.report(step=epoch, success=float(result.success.mean()) if result.success.size else None,
                       targeted_loss=result.targeted_loss, general_loss=result.general_loss)
            return result if params.league or params.leagues else None

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
            after = evaluation.evaluate(model, tokenizer, sets, device)
        trainable = ft.trainable_parameter_count(model)
        if n_senses is not None:
            _save_offsets(ctx, model.sense_offsets.pairs, snapshots[epoch])
    finally:
        del model
    rows = evaluation.comparison_rows(before, after, dataset.loss_type, params.hard_neg_tolerance)
    league_rows = _league_rows(before, history.evaluations, params.leagues) if params.leagues else []
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


def _league_rows(before, evaluations: list, leagues: list[float]) -> list[dict[str, Any]]:
    """One row per degradation bound eps (level "league"): the metrics at the last epoch inside
    G < G_0 (1 + eps), read off the same run, as the original's results file records every league.
    Columns are prefixed `league_` so that the aggregate row's metrics (what tune selects on) are not
    averaged with them."""
    from tasks.editing import evaluation

    losses = [r.general_loss for r in evaluations]
    out = []
    for eps in leagues:
        epoch = evaluation.select_league_epoch(losses, eps)
        at = evaluations[epoch]
        out.append({
            "level": "league", "league_bound": eps, "league_epoch": epoch,
            "league_success": float(at.success.mean()) if len(at.success) else None,
            "league_success_before": float(before.success.mean()) if len(before.success) else None,
            "league_hard_negative_nll": float(at.hard_negative_nll.mean()) if len(at.hard_negative_nll) else None,
            "league_degradation_general": at.general_loss / before.general_loss - 1,
        })
    return out


OFFSETS_FILE = "sense_offsets.safetensors"


def _save_offsets(ctx: RunContext, pairs, offsets) -> None:
    """The selected (token, sense) pairs and their offsets at the reported epoch (the original saved them
    for the ensemble whenever an epoch was inside the league; the last such epoch wins, as here)."""
    import torch
    from safetensors.torch import save_file

    if ctx.artifact_dir is None:
        return
    ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
    save_file({"pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), "offsets": offsets.contiguous()},
              str(ctx.artifact_dir / OFFSETS_FILE))


def load_offsets(path) -> tuple[list[tuple[int, int]], Any]:
    from safetensors.torch import load_file

    state = load_file(str(path))
    return [(int(v), int(sense)) for v, sense in state["pairs"].tolist()], state["offsets"]


# --------------------------------------------------------------------------------------------------
# editing.rome


class RomeParams(TaskParams):
    model: str = "tiny-gpt2"
    fact: int = Field(0, ge=0)  # index into the facts (built-in or counterfact_file), unless subject/... are given
    counterfact_file: str | None = None  # ROME's counterfact.json (list or jsonl); default: data.BUILTIN_FACTS
    subject: str | None = None
    prompt: str | None = None  # with "{}" for the subject
    target_new: str | None = None
    target_true: str | None = None  # default: the built-in fact's, else the unedited model's greedy token
    paraphrases: list[str] | None = None  # prompts with "{}"
    neighborhood: list[str] | None = None  # full prompts whose true answer is target_true
    layer: int | None = None  # default n_layers // 3 (gpt2-medium 8, gpt2-large 12 as the released hparams)
    v_num_grad_steps: int = Field(20, ge=1)
    v_lr: float = Field(0.5, gt=0)
    v_weight_decay: float = Field(0.5, ge=0)
    kl_factor: float = Field(0.0625, ge=0)
    clamp_norm_factor: float = Field(4.0, gt=0)
    mom2_adjustment: bool = True
    # (tokens, count) of sampled prefixes
    template_lengths: list[tuple[int, int]] = [(5, 10), (10, 10)]  # noqa: RUF012 - pydantic field
    context_templates: list[str] | None = None  # fixed templates with "{}" instead of sampled ones
    cov_text: str = "builtin"  # builtin | val100 | jsonl path: text for C = E[k k^T]
    cov_docs: int = Field(1000, ge=1)
    cov_ridge: float = Field(0.0, ge=0)
    max_length: int = Field(256, ge=8)
    data_dir: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _explicit_request(self) -> RomeParams:
        given = [self.subject is not None, self.prompt is not None, self.target_new is not None]
        if any(given) and not all(given):
            raise ValueError("subject, prompt and target_new must be given together (or none: a built-in fact)")
        if self.prompt is not None and "{}" not in self.prompt:
            raise ValueError(f"prompt must contain '{{}}' for the subject, got prompt={self.prompt!r}")
        if self.context_templates is not None and (
            not self.context_templates or self.context_templates[0] != "{}"
            or any("{}" not in t for t in self.context_templates)
        ):
            raise ValueError('context_templates must start with "{}" (the bare prompt) and each contain "{}"')
        return self


@task("editing.rome", params=RomeParams, version=1, setup=load_model, setup_keys=("model",), resources={"num_cpus": 1},
      smoke={"v_num_grad_steps": 2, "template_lengths": [(3, 1)], "cov_docs": 4, "max_length": 64})
def rome_edit(params: RomeParams, ctx: RunContext) -> list[dict[str, Any]]:
    """ROME rank-one edit of one MLP layer (Meng et al. 2022), undone before returning.

    Probabilities of the new and true object before/after on the rewrite, paraphrase and neighborhood
    prompts (CounterFact-style, P = exp(-mean token NLL)), plus an aggregate row (efficacy, paraphrase
    and neighborhood scores, general-text loss change). The edit is undone before returning. Maths and
    simplifications: rome.py.
    """
    from tasks.editing import _arch, compute, data, rome

    model, tokenizer = _model_and_tokenizer(params, ctx)
    device = _device(model)
    n_layers = _arch.n_layers(model)
    layer = params.layer if params.layer is not None else n_layers // 3
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} out of range for a model with {n_layers} layers")
    request = _rome_request(params, model, tokenizer, device)
    max_length = min(params.max_length, _arch.max_positions(model))

    templates = params.context_templates or _cached(
        model, ("templates", tuple(map(tuple, params.template_lengths)), ctx.seed),
        lambda: rome.sample_context_templates(model, tokenizer, params.template_lengths, ctx.seed, device),
    )
    cov_texts = data.general_texts(params.cov_text, params.data_dir)[: params.cov_docs]
    general_chunks = compute.encode_texts(tokenizer, cov_texts, max_length)
    cov_inv = None
    if params.mom2_adjustment:
        cov_inv = _cached(
            model, ("cov_inv", layer, params.cov_text, params.cov_docs, params.cov_ridge, max_length),
            lambda: rome.inverse_second_moment(rome.second_moment(model, layer, general_chunks, device),
                                               params.cov_ridge),
        )
    hp = rome.RomeHparams(
        layer=layer, v_num_grad_steps=params.v_num_grad_steps, v_lr=params.v_lr,
        v_weight_decay=params.v_weight_decay, kl_factor=params.kl_factor,
        clamp_norm_factor=params.clamp_norm_factor, mom2_adjustment=params.mom2_adjustment,
    )
    update = rome.compute_rome_update(
        model, tokenizer, hp, request["prompt"], request["subject"], request["target_new"], templates, cov_inv, device
    )
    prompts = request["prompts"]
    before = _candidate_probs(model, tokenizer, prompts, request, max_length, device)
    general_before, _ = compute.text_loss(model, general_chunks, device)
    with rome.applied_update(model, update) as delta:
        after = _candidate_probs(model, tokenizer, prompts, request, max_length, device)
        general_after, _ = compute.text_loss(model, general_chunks, device)
        update_norm = float(delta.norm())

    rows: list[dict[str, Any]] = []
    for (kind, text), (new_b, true_b), (new_a, true_a) in zip(prompts, before, after, strict=True):
        wants_new = kind != "neighborhood"
        rows.append(
            {
                "level": "prompt",
                "prompt_type": kind,
                "prompt_text": text,
                "p_new_before": new_b,
                "p_new_after": new_a,
                "p_true_before": true_b,
                "p_true_after": true_a,
                "prompt_success_before": (new_b > true_b) if wants_new else (true_b > new_b),
                "prompt_success": (new_a > true_a) if wants_new else (true_a > new_a),
            }
        )
    rows.append(_rome_aggregate(rows, update, update_norm, general_before, general_after, request, layer))
    return uniform_rows(rows)


def _rome_request(params: RomeParams, model, tokenizer, device) -> dict[str, Any]:
    """The request (subject, prompt, targets) and the prompts to evaluate: (kind, full text) pairs."""
    from tasks.editing import data

    if params.subject is None:
        facts = data.read_counterfact(params.counterfact_file) if params.counterfact_file else data.BUILTIN_FACTS
        if params.fact >= len(facts):
            raise ValueError(f"fact={params.fact} out of range for {len(facts)} facts")
        fact = facts[params.fact]
        subject, prompt, target_new = fact.subject, fact.prompt, fact.target_new
        target_true = params.target_true or fact.target_true
        paraphrases = params.paraphrases if params.paraphrases is not None else [fact.paraphrase]
        neighborhood = params.neighborhood if params.neighborhood is not None else list(fact.neighborhood)
    else:
        # RomeParams' validator: subject, prompt and target_new come together
        assert params.prompt is not None and params.target_new is not None
        subject, prompt, target_new = params.subject, params.prompt, params.target_new
        target_true = params.target_true or _greedy_token(model, tokenizer, prompt.format(subject), device)
        paraphrases, neighborhood = params.paraphrases or [], params.neighborhood or []
    prompts = [("rewrite", prompt.format(subject))]
    prompts += [("paraphrase", p.format(subject)) for p in paraphrases]
    prompts += [("neighborhood", p) for p in neighborhood]
    space = lambda s: s if s.startswith(" ") else " " + s  # noqa: E731
    return {
        "subject": subject, "prompt": prompt, "target_new": space(target_new),
        "target_true": space(target_true), "prompts": prompts,
    }


def _greedy_token(model, tokenizer, text: str, device) -> str:
    import torch

    with torch.no_grad():
        ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
        return tokenizer.decode([int(model(input_ids=ids).logits[0, -1].argmax())])


def _candidate_probs(model, tokenizer, prompts, request, max_length, device) -> list[tuple[float, float]]:
    """(P_new, P_true) per prompt with P = exp(-mean token NLL) of the candidate after the prompt."""
    import torch

    from tasks.editing import compute

    out = []
    for _, text in prompts:
        pair = []
        for target in (request["target_new"], request["target_true"]):
            encoded = [compute.encode_example(tokenizer, text, target, max_length)]
            with torch.no_grad():
                n, length = compute.suffix_nll(model, encoded, device)
            pair.append(math.exp(-float(n[0]) / float(length[0])))
        out.append((pair[0], pair[1]))
    return out


def _rome_aggregate(rows, update, update_norm, general_before, general_after, request, layer) -> dict[str, Any]:
    def score(kind: str, key: str) -> float | None:
        values = [r[key] for r in rows if r["prompt_type"] == kind]
        return sum(values) / len(values) if values else None

    rewrite = rows[0]
    neighbours = [r for r in rows if r["prompt_type"] == "neighborhood"]
    return {
        "level": "aggregate",
        "edit_subject": request["subject"],
        "target_new_text": request["target_new"],
        "target_true_text": request["target_true"],
        "edit_layer": layer,
        "efficacy_score": float(rewrite["prompt_success"]),
        "efficacy_score_before": float(rewrite["prompt_success_before"]),
        "efficacy_magnitude": rewrite["p_new_after"] - rewrite["p_true_after"],
        "paraphrase_score": score("paraphrase", "prompt_success"),
        "neighborhood_score": score("neighborhood", "prompt_success"),
        "neighborhood_score_before": score("neighborhood", "prompt_success_before"),
        "neighborhood_abs_change": (
            sum(abs(r["p_true_after"] - r["p_true_before"]) for r in neighbours) / len(neighbours)
            if neighbours else None
        ),
        "general_loss_before": general_before,
        "general_loss": general_after,
        "degradation_general": general_after / general_before - 1,
        "v_loss": update.v_loss,
        "v_steps": update.v_steps,
        "delta_norm": float((update.v_star - update.v_init).norm()),
        "update_norm": update_norm,
    }


# --------------------------------------------------------------------------------------------------
# editing.causal_trace


class TraceFact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str  # with "{}" for the subject
    subject: str
    target: str  # expected answer (its first token is compared with the prediction)


class CausalTraceParams(TaskParams):
    model: str = "tiny-gpt2"
    facts: list[TraceFact] | None = None  # default: facts_file, else data.BUILTIN_FACTS (true objects)
    facts_file: str | None = None  # ROME's known_1000.json or jsonl of {prompt with "{}", subject, target}
    fact_indices: list[int] | None = None  # which of the facts to trace (default all)
    sites: list[Literal["hidden", "mlp", "attn"]] = ["hidden", "mlp", "attn"]  # noqa: RUF012 - pydantic field
    window: int = Field(10, ge=1)  # layers restored together for mlp / attn (hidden: always 1)
    samples: int = Field(10, ge=1)
    noise_factor: float = Field(3.0, gt=0)  # nu = factor x std of subject embeddings ("s3")
    noise_scale: float | None = Field(None, gt=0)  # a fixed nu instead (the paper: 0.025 for GPT-J)
    noise_seed: int = 1
    only_correct: bool = True  # the original traces only facts whose greedy first token is the target's
    answer: Literal["predicted", "expected"] = "predicted"


@task(
    "editing.causal_trace",
    params=CausalTraceParams,
    version=2,  # 2: the noise std counts every subject-token occurrence (1: unique ids)
    setup=load_model,
    setup_keys=("model",),
    resources={"num_cpus": 1},
    smoke={"fact_indices": [0], "sites": ["hidden", "mlp"], "window": 1, "samples": 2, "only_correct": False},
)
def causal_trace(params: CausalTraceParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Causal tracing (Meng et al. 2022): restored p(answer) per (fact, site, layer, token).

    After corrupting the subject embeddings; rows of level "cell", plus one level "fact" row per fact
    (clean and corrupted probabilities, whether it was traced). Definitions and defaults: trace.py.
    """
    import torch

    from tasks.editing import _arch, data, trace
    from tasks.editing.tokens import subject_token_range

    model, tokenizer = _model_and_tokenizer(params, ctx)
    device = _device(model)
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
    for i in indices:
        fact = facts[i]
        text = fact.prompt.format(fact.subject)
        ids = tokenizer(text)["input_ids"]
        start, end = subject_token_range(tokenizer, text, fact.subject)
        expected = tokenizer(" " + fact.target.lstrip(), add_special_tokens=False)["input_ids"][0]
        input_ids = torch.tensor([ids], device=device)
        with torch.no_grad():
            predicted = int(model(input_ids=input_ids).logits[0, -1].argmax())
        correct = predicted == expected
        answer_id = predicted if params.answer == "predicted" else expected
        traced = correct or not params.only_correct
        inp = trace.TraceInput(input_ids, (start, end), answer_id)
        noise = trace.make_noise(params.samples, end - start, d, scale, params.noise_seed, device)
        fact_row = {
            "level": "fact", "fact_index": i, "subject": fact.subject, "prompt_text": text,
            "answer_token": tokenizer.decode([answer_id]), "correct_prediction": correct, "traced": traced,
            "noise_level": scale, "subject_start": start, "subject_end": end, "n_tokens": len(ids),
        }
        if not traced:
            rows.append(fact_row)
            continue
        token_strings = [tokenizer.decode([t]) for t in ids]
        for site in params.sites:
            window = 1 if site == "hidden" else params.window
            grid, p_clean, p_corrupted = trace.trace_grid(model, inp, site, noise, window)
            fact_row.update(p_clean=p_clean, p_corrupted=p_corrupted)
            for t in range(grid.shape[0]):
                for layer in range(grid.shape[1]):
                    p = float(grid[t, layer])
                    rows.append(
                        {
                            "level": "cell", "fact_index": i, "subject": fact.subject, "site": site,
                            "restore_window": window, "layer": layer, "token_index": t, "token": token_strings[t],
                            "is_subject": start <= t < end, "is_last_subject_token": t == end - 1,
                            "p_restored": p, "indirect_effect": p - p_corrupted,
                            "p_clean": p_clean, "p_corrupted": p_corrupted,
                        }
                    )
        rows.append(fact_row)
    return uniform_rows(rows)


# --------------------------------------------------------------------------------------------------
# editing.ensemble

_LARGE: dict[tuple[str, str], Any] = {}  # larger models, loaded once per worker process


class EnsembleParams(TaskParams):
    model: str = "tiny-backpack"  # the Backpack whose sense offsets are ensembled (matches the upstream runs)
    large_model: str = "tiny-gpt2-corpus"  # any causal LM sharing the Backpack's tokenizer (GPT-J in the paper)
    dataset: str = "facts"
    split: Literal["val", "test"] = "test"
    league: float = Field(1e-4, gt=0)
    offsets_path: str | None = None  # default: sense_offsets.safetensors of the single upstream run
    beta_start: float = Field(1.0, gt=0)
    beta_step: float = Field(0.1, gt=0)
    general_text: str = "builtin"
    general_docs: int = Field(100, ge=1)
    kl_docs: int = Field(100, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_hard_negative: int | None = Field(None, ge=1)
    hard_negative_split: Literal["val", "test"] | None = None
    hard_neg_tolerance: float = Field(math.log(1.5), ge=0)
    max_length: int = Field(512, ge=8)
    eval_batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    seed: int = 0


# version 2: combined over the larger model's vocabulary, before-edit scores and G_0 on the sliced larger model
@task("editing.ensemble", params=EnsembleParams, version=2, setup=load_model, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"large_model": "tiny-backpack", "beta_step": 0.5, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2,
             "kl_docs": 2, "max_length": 64},
      smoke_upstream={"finetune": ("editing.finetune", {
          "model": "tiny-backpack", "method": "senses", "epochs": 1, "max_train": 1, "grad_acc_steps": 1,
          "senses_per_example": 2, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2, "kl_docs": 2,
          "max_length": 64})})
def ensemble(params: EnsembleParams, ctx: RunContext) -> list[dict[str, Any]]:
    """A sense-fine-tuned Backpack ensembled with a larger LM (Hewitt et al. 2024, section 5.3): beta
    searched down from 1 by 0.1 until general loss < (1 + league) x the larger model's; success, hard
    negatives and degradation of the ensemble vs the larger model alone, both over the larger model's
    vocabulary (the tokenizer's ids, without logit padding, as the original). Maths: ensemble.py."""
    from tasks.editing import _arch, data, evaluation
    from tasks.editing.ensemble import EnsembleLM, search_beta
    from tasks.editing.models import load_model as load
    from tasks.editing.senses import prepare_sense_model

    backpack, tokenizer = _model_and_tokenizer(params, ctx)
    device = _device(backpack)
    key = (params.large_model, str(device))
    if key not in _LARGE:
        _LARGE[key] = load(params.large_model, device=str(device))[0]
    large = _LARGE[key]
    path = params.offsets_path if params.offsets_path is not None else ctx.upstream_one().artifact_dir / OFFSETS_FILE
    pairs, offsets = load_offsets(path)
    edited = prepare_sense_model(backpack, pairs)
    import torch

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


class MemitParams(TaskParams):
    model: str = "tiny-gpt2-corpus"
    dataset: str = "facts"
    split: Literal["val", "test"] = "val"
    subject_type: Literal["prefix", "true"] = "prefix"  # prefix: the whole prefix is the subject ("standard")
    # default: the first ceil(L/3) layers (backpack 0..4, pythia-410m 3..7 in the paper)
    layers: list[int] | None = None
    v_num_grad_steps: int = Field(20, ge=1)
    v_lr: float = Field(0.5, gt=0)
    v_weight_decay: float = Field(0.5, ge=0)
    kl_factor: float = Field(0.0625, ge=0)  # sweep: U(0.001, 0.1)
    clamp_norm_factor: float = Field(0.75, gt=0)  # sweep: 10^U(-1.35, 0)
    mom2_update_weight: float = Field(15000.0, gt=0)  # sweep: randint(9000, 75000)
    # the fork's behaviours (sarahlc888/memit compute_z.py; the paper's runs had them; see rome.compute_v):
    fork_anti_prompts: bool = False  # verb anti prompts end in the target's leading tokens
    fork_length_norm: bool = False  # balance / verb losses divide both NLLs by one target's length
    fork_negative_stop: float | None = None  # stereoset / verb optimisation stops below this (fork: -50)
    template_lengths: list[tuple[int, int]] = [(10, 10)]  # noqa: RUF012 - pydantic field
    context_templates: list[str] | None = None
    league: float | None = Field(None, gt=0)  # in_league = degradation_general < league
    general_text: str = "builtin"
    general_docs: int = Field(100, ge=1)
    cov_docs: int = Field(1000, ge=1)
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_hard_negative: int | None = Field(None, ge=1)
    hard_negative_split: Literal["val", "test"] | None = None
    hard_neg_tolerance: float = Field(math.log(1.5), ge=0)
    max_length: int = Field(512, ge=8)
    eval_batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    seed: int = 0


def _memit_requests(params: MemitParams, dataset) -> list:
    """One request per canonical example: prompt "{}" with the whole prefix as subject (prefix), or the
    annotated subject (true; only the built-in facts carry one: the paper's annotations are not public)."""
    from tasks.editing import data
    from tasks.editing.memit import MemitRequest

    train = dataset.train[: params.max_train]
    if params.subject_type == "true":
        if params.dataset != data.BUILTIN_DATASET:
            raise ValueError("subject_type 'true' needs annotated subjects: only dataset 'facts' has them")
        facts = data._split_facts(params.split)[0][: len(train)]
        return [MemitRequest(f.prompt, f.subject, ex.suffixes[0], ex.suffixes[1] if len(ex.suffixes) > 1 else None)
                for f, ex in zip(facts, train, strict=True)]
    return [MemitRequest("{}", ex.prefix, ex.suffixes[0], ex.suffixes[1] if len(ex.suffixes) > 1 else None)
            for ex in train]


@task("editing.memit", params=MemitParams, version=1, setup=load_model, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "layers": [0], "v_num_grad_steps": 2, "template_lengths": [(3, 1)], "cov_docs": 4,
             "max_train": 1, "max_eval": 1, "max_hard_negative": 1, "general_docs": 2, "max_length": 64})
def memit_edit(params: MemitParams, ctx: RunContext) -> list[dict[str, Any]]:
    """MEMIT (Meng et al. 2023) of all canonical examples of a split in one batch, evaluated like
    fine-tuning (success, hard negatives, degradation vs the unedited model), as the canonical-examples
    paper's baseline. The edit is undone before returning. Maths and simplifications: memit.py."""
    from tasks.editing import _arch, compute, data, evaluation, memit, rome

    model, tokenizer = _model_and_tokenizer(params, ctx)
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
    cov_chunks = compute.encode_texts(tokenizer, texts[: params.cov_docs], max_length)
    covs = {layer: _cached(model, ("cov", layer, params.general_text, params.cov_docs, max_length),
                           lambda layer=layer: rome.second_moment(model, layer, cov_chunks, device))
            for layer in layers}
    templates = params.context_templates or _cached(
        model, ("templates", tuple(map(tuple, params.template_lengths)), ctx.seed),
        lambda: rome.sample_context_templates(model, tokenizer, params.template_lengths, ctx.seed, device),
    )
    requests = _memit_requests(params, dataset)
    hp = memit.MemitHparams(
        layers=tuple(layers), v_num_grad_steps=params.v_num_grad_steps, v_lr=params.v_lr,
        v_weight_decay=params.v_weight_decay, kl_factor=params.kl_factor,
        clamp_norm_factor=params.clamp_norm_factor, mom2_update_weight=params.mom2_update_weight,
        loss_type=dataset.loss_type, fork_anti_prompts=params.fork_anti_prompts,
        fork_length_norm=params.fork_length_norm, fork_negative_stop=params.fork_negative_stop,
    )
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
