"""Probing tasks around factual recall: embedding swaps, subject noise, input saliency and step-by-step fact
injection (the experiments are listed in tasks/probing/__init__.py). Adapters only: params in
`tasks.probing.params`, maths in `tasks.probing.ops`.

The setup model is shared across runs and never left edited: embedding swaps / noise edit the input
embedding matrix in place inside `ops.edited_embeddings`, which restores the saved tensor in `finally`
(with tied embeddings the output layer gets an unedited copy meanwhile, unless output="tied"); subject
noise only adds a forward hook (removed in `finally`); fact injection trains a deep copy made by
`tasks.common.trainable.prepare_model`. Models load with `tasks.common.models.load_causal_lm`: every
built-in of the catalogue (editing's `tiny-gpt2-facts` / `tiny-gpt2-corpus`, the common tiny models, ...),
local dirs and `.gguf` files.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.common.rows import uniform_rows
from tasks.common.setup import LMSetup, lm_setup
from tasks.probing.params import (
    EmbeddingSwapParams,
    FactInjectionParams,
    SaliencyParams,
    SubjectNoiseParams,
    SwapSpec,
)

__all__ = ["EmbeddingSwapParams", "FactInjectionParams", "SaliencyParams", "SubjectNoiseParams", "SwapSpec",
           "embedding_swap", "fact_injection", "load", "saliency", "subject_noise"]


def load(params: Any, ctx: RunContext) -> LMSetup:
    """The causal LM and tokenizer of `params.model` on `ctx.device`."""
    from tasks.common.models import load_causal_lm

    model, tokenizer = load_causal_lm(params.model, device=ctx.device)
    return LMSetup(model, tokenizer, ctx.device)


def _generator(seed: int):
    from tasks.common.seeding import torch_generator

    return torch_generator(seed, "cpu")


def resolve_variants(tokenizer, words: list[str], variants: list[str]) -> list[dict]:
    """Per variant: the surface form and single-token id of each word (None when it splits)."""
    from tasks.probing import ops

    out = []
    for variant in variants:
        texts = [ops.variant_text(w, variant) for w in words]
        ids = [ops.single_token_id(tokenizer, t) for t in texts]
        pieces = ["|".join(ops.token_pieces(tokenizer, ops.encode(tokenizer, t))) for t in texts]
        out.append({"variant": variant, "texts": texts, "ids": ids, "pieces": pieces,
                    "ok": all(i is not None for i in ids)})
    return out


def _swap_edit(model, resolved: list[dict], mode: str, noise_scale: float, seed: int):
    from tasks.probing import ops

    ok = [r for r in resolved if r["ok"]]
    pairs = [(r["ids"][0], r["ids"][1]) for r in ok if len(r["ids"]) == 2 and r["ids"][0] != r["ids"][1]]
    noised = sorted({i for r in ok for i in r["ids"]})
    std = noise_scale * ops.embedding_std(model)

    def edit(weight):
        if mode in ("swap", "swap_noise"):
            ops.swap_rows(weight, pairs)
        if mode in ("noise", "swap_noise"):
            ops.noise_rows(weight, noised, std, _generator(seed))

    return edit, noised


def answer_table(model, tokenizer, questions: list[str], edit, touched: list[int], top_k: int, keep_output: bool,
                 **extra) -> list[dict]:
    """top-k rows before/after `edit` and one answer row per question."""
    from tasks.probing import ops

    encoded = [ops.prompt_ids(tokenizer, q) for q in questions]
    before = [ops.next_token_probs(model, ids) for ids in encoded]
    with ops.edited_embeddings(model, edit, keep_output=keep_output):
        after = [ops.next_token_probs(model, ids) for ids in encoded]
    rows = []
    for qi, (question, ids, p0, p1) in enumerate(zip(questions, encoded, before, after, strict=True)):
        for condition, probs in (("before", p0), ("after", p1)):
            for rank, (tok, p) in enumerate(ops.top_k(probs, top_k)):
                rows.append({**extra, "level": "topk", "question_index": qi, "question": question,
                             "condition": condition, "rank": rank, "token": tokenizer.decode([tok]),
                             "token_id": tok, "prob": p})
        a0, a1 = int(p0.argmax()), int(p1.argmax())
        rows.append({
            **extra, "level": "answer", "question_index": qi, "question": question,
            "input_pieces": "|".join(ops.token_pieces(tokenizer, ids)),
            "touched_in_input": any(i in touched for i in ids),
            "answer_before": tokenizer.decode([a0]), "p_before": float(p0[a0]),
            "answer_after": tokenizer.decode([a1]), "p_after": float(p1[a1]),
            "p_original_answer_after": float(p1[a0]), "rank_original_answer_after": int(ops.rank_of(p1, a0)),
            "changed": a0 != a1,
        })
    return rows


@task("probing.embedding_swap", params=EmbeddingSwapParams, version=1, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "mode": "swap_noise", "questions": ["The cat sat on the"], "top_k": 2})
def embedding_swap(params: EmbeddingSwapParams, ctx: RunContext) -> list[dict]:
    """Swap (or noise) the input embeddings of two words in each tokenisation variant; top-k answers per
    question before and after ("Embedding swap"). Variants whose form is not one token are reported
    (level "variant", ok False) and left untouched. With tied embeddings, output="keep" (default) leaves the
    output layer unedited; output="tied" swaps the shared rows, so outputs swap too. Noise
    std = noise_scale x std(embedding matrix), seed ctx.seed.
    """
    from tasks.probing import ops

    model, tokenizer = lm_setup(ctx, params, load)
    words = [params.token_a] + ([params.token_b] if params.token_b else [])
    resolved = resolve_variants(tokenizer, words, list(params.variants))
    edit, touched = _swap_edit(model, resolved, params.mode, params.noise_scale, ctx.seed)
    variant_set = "+".join(params.variants)
    tied = ops.embeddings_tied(model)
    rows = [{"level": "variant", "variant": r["variant"], "text_a": r["texts"][0],
             "text_b": r["texts"][1] if len(words) > 1 else None, "pieces_a": r["pieces"][0],
             "pieces_b": r["pieces"][1] if len(words) > 1 else None, "ok": r["ok"], "variant_set": variant_set,
             "tied_embeddings": tied} for r in resolved]
    rows += answer_table(model, tokenizer, list(params.questions), edit, touched, params.top_k,
                         params.output == "keep", variant_set=variant_set, tied_embeddings=tied)
    return uniform_rows(rows)


def _noise_rows(tokenizer, probs, answer: int, scales: list[float], samples: int, common: dict) -> list[dict]:
    """Per scale: one row per sample (its answer, the clean answer's rank and probability), then a summary."""
    from tasks.probing import ops

    rows: list[dict] = []
    for si, scale in enumerate(scales):
        p = probs[si]  # (samples, V)
        argmax = p.argmax(-1)
        ranks = ops.rank_of(p, answer)
        counts = Counter(tokenizer.decode([int(a)]) for a in argmax)
        for k in range(samples):
            rows.append({**common, "level": "sample", "scale": scale, "sample": k,
                         "answer": tokenizer.decode([int(argmax[k])]), "p_answer": float(p[k, argmax[k]]),
                         "p_original": float(p[k, answer]), "rank_original": int(ranks[k])})
        rows.append({**common, "level": "scale", "scale": scale,
                     "mean_p_original": float(p[:, answer].mean()),
                     "mean_rank_original": float(ranks.float().mean()),
                     "frac_original": float((argmax == answer).float().mean()),
                     "top_answer": counts.most_common(1)[0][0], "n_distinct_answers": len(counts),
                     "answers": ";".join(f"{t!r}:{c}" for t, c in counts.most_common())})
    return rows


@task("probing.subject_noise", params=SubjectNoiseParams, version=1, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "questions": ["The cat sat on the"], "subjects": ["cat"], "noise_scales": [0.0, 1.0],
             "samples": 2})
def subject_noise(params: SubjectNoiseParams, ctx: RunContext) -> list[dict]:
    """Gaussian noise on one subject's token embeddings at a time (its first occurrence in the question,
    causal tracing's corruption without restoration, Meng et al. 2022); per sample the answer and the rank
    and probability of the clean answer, per scale their summary ("Targeted noise").
    Scale unit: the std of the whole embedding matrix (ROME uses 3 x the std of subject embeddings over a
    corpus; simplified here). The same N(0, I) draws serve every scale."""
    from tasks.common.tokens import subject_token_range
    from tasks.probing import ops

    model, tokenizer = lm_setup(ctx, params, load)
    unit = ops.embedding_std(model) if params.noise_unit == "embedding_std" else 1.0
    scales = list(params.noise_scales)
    rows: list[dict] = []
    for qi, question in enumerate(params.questions):
        ids = ops.prompt_ids(tokenizer, question)
        clean = ops.next_token_probs(model, ids)
        answer = int(clean.argmax())
        for subject in params.subjects:
            if f" {subject}" not in f" {question}":
                continue
            start, end = subject_token_range(tokenizer, question, subject)
            positions = list(range(start, end))  # indices into tokenizer(question)["input_ids"] == ids
            probs = ops.noised_distributions(model, ids, positions, [s * unit for s in scales], params.samples,
                                             _generator(ctx.seed * 1000 + qi))
            common = {"question_index": qi, "question": question, "subject": subject,
                      "subject_pieces": "|".join(ops.token_pieces(tokenizer, ids[positions[0]:positions[-1] + 1])),
                      "clean_answer": tokenizer.decode([answer]), "p_clean": float(clean[answer])}
            rows += _noise_rows(tokenizer, probs, answer, scales, params.samples, common)
    return uniform_rows(rows)


@task("probing.saliency", params=SaliencyParams, version=1, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "questions": ["The cat sat on the"], "baselines": ["zero"], "n_steps": 4,
             "swap": {"token_a": "cat", "token_b": "dog"}})
def saliency(params: SaliencyParams, ctx: RunContext) -> list[dict]:
    """Per-token attribution of the answer's probability for several methods and IG baselines, alone and
    with an embedding swap ("Input saliency"); the shared gradient methods (tasks.common.gradients) plus the
    signed gradient x embedding. The target stays the clean answer under the swap."""
    import torch

    from tasks.probing import ops

    model, tokenizer = lm_setup(ctx, params, load)
    conditions: list[tuple[str, Any]] = [("none", lambda w: None)]
    if params.swap is not None:
        resolved = resolve_variants(tokenizer, [params.swap.token_a, params.swap.token_b], list(params.swap.variants))
        conditions.append(("swap", _swap_edit(model, resolved, "swap", 0.0, ctx.seed)[0]))
    rows: list[dict] = []
    for qi, question in enumerate(params.questions):
        ids = torch.tensor(ops.prompt_ids(tokenizer, question))
        if params.answers is not None:
            target = ops.encode(tokenizer, params.answers[qi])[0]
        else:
            target = int(ops.next_token_probs(model, ids.tolist()).argmax())
        pieces = ops.token_pieces(tokenizer, ids.tolist())
        for condition, edit in conditions:
            with ops.edited_embeddings(model, edit, keep_output=True):
                p_target = float(ops.next_token_probs(model, ids.tolist())[target])
                for method in params.methods:
                    for baseline in (params.baselines if method == "integrated_gradients" else [None]):
                        scores = ops.token_saliency(model, tokenizer, ids, target, method, baseline,
                                                    n_steps=params.n_steps, seed=ctx.seed)
                        for pos, (piece, score) in enumerate(zip(pieces, scores.tolist(), strict=True)):
                            rows.append({"question_index": qi, "question": question,
                                         "target": tokenizer.decode([target]), "p_target": p_target,
                                         "condition": condition, "method": method, "baseline": baseline,
                                         "position": pos, "token": piece, "score": score})
    return uniform_rows(rows)


@task("probing.fact_injection", params=FactInjectionParams, version=1, setup=load, setup_keys=("model",),
      resources={"num_cpus": 1}, smoke={"model": "tiny-gpt2", "max_steps": 2, "greedy_tokens": 2, "general_docs": 2})
def fact_injection(params: FactInjectionParams, ctx: RunContext) -> list[dict]:
    """Fine-tune on a sentence stating a new fact one optimiser step at a time; per step and layer the
    gradient, update and cumulative weight-change norms, per step the new answer's probability and whether
    greedy decoding produces it; finally the general-text loss against the unedited model
    ("Fact injection", "Freeze / unfreeze", "Afterwards"). Trains a deep copy; Adam without
    weight decay (or SGD), one example per step, dropout off."""
    from tasks.common.general_text import general_texts
    from tasks.common.nll import encode_texts, text_loss
    from tasks.common.trainable import normalise_layers, prepare_model
    from tasks.probing import ops

    model, tokenizer = lm_setup(ctx, params, load)
    statement = params.statement or f"{params.question} {params.answer.strip()}."
    method = "full" if params.trainable_layers is None else "layers"
    trained = prepare_model(model, method, trainable_layers=params.trainable_layers, seed=ctx.seed)
    layer_set = "all" if params.trainable_layers is None else ",".join(
        str(i) for i in normalise_layers(params.trainable_layers, len(ops.layer_groups(model)) - 1))
    steps, layer_rows = ops.injection_run(
        trained, tokenizer, statement, params.question, params.answer, params.lr, params.max_steps,
        params.optimizer, params.loss_on, params.stop_when_learned, params.greedy_tokens)
    device = next(model.parameters()).device
    chunks = encode_texts(tokenizer, general_texts(params.general_text)[: params.general_docs], 128)
    before, n_tokens = text_loss(model, chunks, device)
    after, _ = text_loss(trained, chunks, device)
    learned = next((s["step"] for s in steps if s["answered"]), None)
    rows = [{"level": "step", "layer_set": layer_set, **s} for s in steps]
    rows += [{"level": "layer", "layer_set": layer_set, **r} for r in layer_rows]
    rows.append({"level": "final", "layer_set": layer_set, "statement_text": statement, "steps_to_learn": learned,
                 "steps_run": steps[-1]["step"], "p_answer_before": steps[0]["p_answer"],
                 "p_answer_after": steps[-1]["p_answer"], "general_loss_before": before, "general_loss_after": after,
                 "general_loss_delta": after - before, "general_tokens": n_tokens})
    del trained
    return uniform_rows(rows)
