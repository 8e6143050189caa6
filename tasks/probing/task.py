"""Probing tasks around factual recall (seeds.md D.8): embedding swaps, subject noise, saliency, fact
injection. Adapters only; the maths is in `tasks.probing.compute`.

The setup model is shared across runs and never left edited: embedding swaps / noise edit the input
embedding matrix in place inside `compute.edited_embeddings`, which restores the saved tensor in
`finally` (with tied embeddings the output layer gets an unedited copy meanwhile, unless output="tied");
subject noise only adds a forward hook (removed in `finally`); fact injection trains a deep
copy made by the editing family's `finetune.prepare_model`.
Models load through the editing family (`tasks.editing.models.load_model`): its built-in
`tiny-gpt2-facts` / `tiny-gpt2-corpus`, the common tiny models, local dirs and `.gguf` files.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.context import RunContext
from orchestrator.registry import TaskParams, task

Variant = Literal["space_lower", "bare_lower", "space_cap", "bare_cap", "space_upper", "bare_upper"]
SaliencyMethod = Literal["gradient_x_input", "integrated_gradients", "norm", "input_x_gradient", "gradient_shap"]
Baseline = Literal["bos", "eos", "zero", "unk"]

DEFAULT_QUESTIONS = [
    "The cat is afraid of the",
    "The mouse is afraid of the",
    "The dog sat on the",
    "The cat sat on the",
    "My dog is called",
    "The lion is the king of the",
]


def load_model(params: Any, ctx: RunContext):
    from tasks.editing.models import load_model as load

    return load(params.model, device=ctx.device)


def _model_and_tokenizer(params: Any, ctx: RunContext):
    return ctx.setup if ctx.setup is not None else load_model(params, ctx)


def _uniform(rows: list[dict]) -> list[dict]:
    from tasks.editing.task import uniform_rows

    return uniform_rows(rows)


def _generator(seed: int):
    from tasks.common.seeding import torch_generator

    return torch_generator(seed, "cpu")


def _variants(*names: Variant) -> list[Variant]:
    return list(names)


# --------------------------------------------------------------------------------------------------
# probing.embedding_swap


class SwapSpec(BaseModel):
    """Two words whose input embeddings are swapped in each listed tokenisation variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    token_a: str = "cat"
    token_b: str = "dog"
    variants: list[Variant] = Field(default_factory=lambda: _variants("space_lower"))


class EmbeddingSwapParams(TaskParams):
    model: str = "tiny-gpt2-facts"
    token_a: str = "cat"
    token_b: str | None = "dog"  # None: noise on token_a only (mode noise)
    variants: list[Variant] = Field(default_factory=lambda: _variants("space_lower"))
    mode: Literal["swap", "noise", "swap_noise"] = "swap"
    noise_scale: float = Field(1.0, ge=0)  # in units of the embedding matrix's std (modes noise, swap_noise)
    questions: list[str] = Field(default_factory=lambda: list(DEFAULT_QUESTIONS))
    top_k: int = Field(5, ge=1)
    # tied input/output embeddings: "keep" edits the input side only (the output layer keeps the unedited
    # matrix); "tied" edits the shared matrix, as a plain in-place swap of wte does (outputs swap too)
    output: Literal["keep", "tied"] = "keep"


def resolve_variants(tokenizer, words: list[str], variants: list[str]) -> list[dict]:
    """Per variant: the surface form and single-token id of each word (None when it splits)."""
    from tasks.probing import compute

    out = []
    for variant in variants:
        texts = [compute.variant_text(w, variant) for w in words]
        ids = [compute.single_token_id(tokenizer, t) for t in texts]
        pieces = ["|".join(compute.token_pieces(tokenizer, compute.encode(tokenizer, t))) for t in texts]
        out.append({"variant": variant, "texts": texts, "ids": ids, "pieces": pieces,
                    "ok": all(i is not None for i in ids)})
    return out


def _swap_edit(model, resolved: list[dict], mode: str, noise_scale: float, seed: int):
    from tasks.probing import compute

    ok = [r for r in resolved if r["ok"]]
    pairs = [(r["ids"][0], r["ids"][1]) for r in ok if len(r["ids"]) == 2 and r["ids"][0] != r["ids"][1]]
    noised = sorted({i for r in ok for i in r["ids"]})
    std = noise_scale * compute.embedding_std(model)

    def edit(weight):
        if mode in ("swap", "swap_noise"):
            compute.swap_rows(weight, pairs)
        if mode in ("noise", "swap_noise"):
            compute.noise_rows(weight, noised, std, _generator(seed))

    return edit, noised


def answer_table(model, tokenizer, questions: list[str], edit, touched: list[int], top_k: int, keep_output: bool,
                 **extra) -> list[dict]:
    """top-k rows before/after `edit` and one answer row per question."""
    from tasks.probing import compute

    encoded = [compute.prompt_ids(tokenizer, q) for q in questions]
    before = [compute.next_token_probs(model, ids) for ids in encoded]
    with compute.edited_embeddings(model, edit, keep_output=keep_output):
        after = [compute.next_token_probs(model, ids) for ids in encoded]
    rows = []
    for qi, (question, ids, p0, p1) in enumerate(zip(questions, encoded, before, after, strict=True)):
        for condition, probs in (("before", p0), ("after", p1)):
            for rank, (tok, p) in enumerate(compute.top_k(probs, top_k)):
                rows.append({**extra, "level": "topk", "question_index": qi, "question": question,
                             "condition": condition, "rank": rank, "token": tokenizer.decode([tok]),
                             "token_id": tok, "prob": p})
        a0, a1 = int(p0.argmax()), int(p1.argmax())
        rows.append({
            **extra, "level": "answer", "question_index": qi, "question": question,
            "input_pieces": "|".join(compute.token_pieces(tokenizer, ids)),
            "touched_in_input": any(i in touched for i in ids),
            "answer_before": tokenizer.decode([a0]), "p_before": float(p0[a0]),
            "answer_after": tokenizer.decode([a1]), "p_after": float(p1[a1]),
            "p_original_answer_after": float(p1[a0]), "rank_original_answer_after": int(compute.rank_of(p1, a0)),
            "changed": a0 != a1,
        })
    return rows


@task("probing.embedding_swap", params=EmbeddingSwapParams, version=1, setup=load_model, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "mode": "swap_noise", "questions": ["The cat sat on the"], "top_k": 2})
def embedding_swap(params: EmbeddingSwapParams, ctx: RunContext) -> list[dict]:
    """Swap (or noise) the input embeddings of two words in each tokenisation variant; top-k answers per
    question before and after (seeds.md D.8 "Embedding swap"). Variants whose form is not one token are
    reported (level "variant", ok False) and left untouched. With tied embeddings, output="keep" (default)
    leaves the output layer unedited; output="tied" swaps the shared rows, so outputs swap too. Noise
    std = noise_scale x std(embedding matrix), seed ctx.seed.
    """
    from tasks.probing import compute

    model, tokenizer = _model_and_tokenizer(params, ctx)
    words = [params.token_a] + ([params.token_b] if params.token_b else [])
    if params.mode != "noise" and len(words) < 2:
        raise ValueError(f"mode {params.mode!r} needs token_b")
    resolved = resolve_variants(tokenizer, words, list(params.variants))
    edit, touched = _swap_edit(model, resolved, params.mode, params.noise_scale, ctx.seed)
    variant_set = "+".join(params.variants)
    tied = compute.embeddings_tied(model)
    rows = [{"level": "variant", "variant": r["variant"], "text_a": r["texts"][0],
             "text_b": r["texts"][1] if len(words) > 1 else None, "pieces_a": r["pieces"][0],
             "pieces_b": r["pieces"][1] if len(words) > 1 else None, "ok": r["ok"], "variant_set": variant_set,
             "tied_embeddings": tied} for r in resolved]
    rows += answer_table(model, tokenizer, list(params.questions), edit, touched, params.top_k,
                         params.output == "keep", variant_set=variant_set, tied_embeddings=tied)
    return _uniform(rows)


# --------------------------------------------------------------------------------------------------
# probing.subject_noise


class SubjectNoiseParams(TaskParams):
    model: str = "tiny-gpt2-facts"
    questions: list[str] = Field(default_factory=lambda: list(DEFAULT_QUESTIONS))
    # each noised alone where it occurs in a question
    subjects: list[str] = Field(default_factory=lambda: ["cat", "dog", "mouse", "lion"])
    noise_scales: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0])  # x std(embedding matrix)
    samples: int = Field(10, ge=1)
    noise_unit: Literal["embedding_std", "absolute"] = "embedding_std"


@task("probing.subject_noise", params=SubjectNoiseParams, version=1, setup=load_model, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "questions": ["The cat sat on the"], "subjects": ["cat"], "noise_scales": [0.0, 1.0],
             "samples": 2})
def subject_noise(params: SubjectNoiseParams, ctx: RunContext) -> list[dict]:
    """Gaussian noise on one subject's token embeddings at a time (its first occurrence in the question,
    causal tracing's corruption without restoration); per sample the answer and the rank and probability
    of the clean answer, per scale their summary (seeds.md D.8 "Targeted noise").
    Scale unit: the std of the whole embedding matrix (ROME uses 3 x the std of subject embeddings over a
    corpus; simplified here). The same N(0, I) draws serve every scale."""
    from tasks.editing.tokens import subject_token_range
    from tasks.probing import compute

    model, tokenizer = _model_and_tokenizer(params, ctx)
    unit = compute.embedding_std(model) if params.noise_unit == "embedding_std" else 1.0
    scales = list(params.noise_scales)
    rows: list[dict] = []
    for qi, question in enumerate(params.questions):
        ids = compute.prompt_ids(tokenizer, question)
        clean = compute.next_token_probs(model, ids)
        answer = int(clean.argmax())
        for subject in params.subjects:
            if f" {subject}" not in f" {question}":
                continue
            start, end = subject_token_range(tokenizer, question, subject)
            positions = list(range(start, end))  # indices into tokenizer(question)["input_ids"] == ids
            probs = compute.noised_distributions(model, ids, positions, [s * unit for s in scales], params.samples,
                                                 _generator(ctx.seed * 1000 + qi))
            common = {"question_index": qi, "question": question, "subject": subject,
                      "subject_pieces": "|".join(compute.token_pieces(tokenizer, ids[positions[0]:positions[-1] + 1])),
                      "clean_answer": tokenizer.decode([answer]), "p_clean": float(clean[answer])}
            for si, scale in enumerate(scales):
                p = probs[si]  # (samples, V)
                argmax = p.argmax(-1)
                ranks = compute.rank_of(p, answer)
                counts = Counter(tokenizer.decode([int(a)]) for a in argmax)
                for k in range(params.samples):
                    rows.append({**common, "level": "sample", "scale": scale, "sample": k,
                                 "answer": tokenizer.decode([int(argmax[k])]), "p_answer": float(p[k, argmax[k]]),
                                 "p_original": float(p[k, answer]), "rank_original": int(ranks[k])})
                rows.append({**common, "level": "scale", "scale": scale,
                             "mean_p_original": float(p[:, answer].mean()),
                             "mean_rank_original": float(ranks.float().mean()),
                             "frac_original": float((argmax == answer).float().mean()),
                             "top_answer": counts.most_common(1)[0][0], "n_distinct_answers": len(counts),
                             "answers": ";".join(f"{t!r}:{c}" for t, c in counts.most_common())})
    return _uniform(rows)


# --------------------------------------------------------------------------------------------------
# probing.saliency


def _methods(*names: SaliencyMethod) -> list[SaliencyMethod]:
    return list(names)


def _baselines(*names: Baseline) -> list[Baseline]:
    return list(names)


class SaliencyParams(TaskParams):
    model: str = "tiny-gpt2-facts"
    questions: list[str] = Field(default_factory=lambda: DEFAULT_QUESTIONS[:3])
    # per question, the answer text whose FIRST token is the target (give the leading space: " Paris");
    # None: the model's greedy next token
    answers: list[str] | None = None
    methods: list[SaliencyMethod] = Field(default_factory=lambda: _methods("gradient_x_input", "integrated_gradients"))
    # integrated_gradients only
    baselines: list[Baseline] = Field(default_factory=lambda: _baselines("bos", "eos", "zero"))
    n_steps: int = Field(50, ge=2)
    swap: SwapSpec | None = None  # also attribute with these input embeddings swapped (output layer kept)


@task("probing.saliency", params=SaliencyParams, version=1, setup=load_model, setup_keys=("model",),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "questions": ["The cat sat on the"], "baselines": ["zero"], "n_steps": 4,
             "swap": {"token_a": "cat", "token_b": "dog"}})
def saliency(params: SaliencyParams, ctx: RunContext) -> list[dict]:
    """Per-token attribution of the answer's probability for several methods and IG baselines, alone and
    with an embedding swap (seeds.md D.8 "Input saliency"); methods from the attribution family plus the
    notes' signed gradient x embedding. The target stays the clean answer under the swap."""
    import torch

    from tasks.probing import compute

    model, tokenizer = _model_and_tokenizer(params, ctx)
    if params.answers is not None and len(params.answers) != len(params.questions):
        raise ValueError(f"answers has {len(params.answers)} entries for {len(params.questions)} questions")
    conditions: list[tuple[str, Any]] = [("none", lambda w: None)]
    if params.swap is not None:
        resolved = resolve_variants(tokenizer, [params.swap.token_a, params.swap.token_b], list(params.swap.variants))
        edit, _ = _swap_edit(model, resolved, "swap", 0.0, ctx.seed)
        conditions.append(("swap", edit))
    rows: list[dict] = []
    for qi, question in enumerate(params.questions):
        ids = torch.tensor(compute.prompt_ids(tokenizer, question))
        if params.answers is not None:
            target = compute.encode(tokenizer, params.answers[qi])[0]
        else:
            target = int(compute.next_token_probs(model, ids.tolist()).argmax())
        pieces = compute.token_pieces(tokenizer, ids.tolist())
        for condition, edit in conditions:
            with compute.edited_embeddings(model, edit, keep_output=True):
                p_target = float(compute.next_token_probs(model, ids.tolist())[target])
                for method in params.methods:
                    for baseline in (params.baselines if method == "integrated_gradients" else [None]):
                        scores = compute.token_saliency(model, tokenizer, ids, target, method, baseline,
                                                        n_steps=params.n_steps, seed=ctx.seed)
                        for pos, (piece, score) in enumerate(zip(pieces, scores.tolist(), strict=True)):
                            rows.append({"question_index": qi, "question": question,
                                         "target": tokenizer.decode([target]), "p_target": p_target,
                                         "condition": condition, "method": method, "baseline": baseline,
                                         "position": pos, "token": piece, "score": score})
    return _uniform(rows)


# --------------------------------------------------------------------------------------------------
# probing.fact_injection


class FactInjectionParams(TaskParams):
    model: str = "tiny-gpt2-facts"
    question: str = "The capital of Zorbia is"
    answer: str = "Tokyo"
    statement: str | None = None  # default: f"{question} {answer}."
    trainable_layers: list[int] | None = None  # None: every parameter; else only these blocks
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    loss_on: Literal["sentence", "answer"] = "sentence"
    max_steps: int = Field(50, ge=1)
    stop_when_learned: bool = True
    greedy_tokens: int = Field(4, ge=1)
    general_text: str = "builtin"  # the editing family's general texts (builtin | val100 | a jsonl path)
    general_docs: int = Field(20, ge=1)


@task("probing.fact_injection", params=FactInjectionParams, version=1, setup=load_model, setup_keys=("model",),
      resources={"num_cpus": 1}, smoke={"model": "tiny-gpt2", "max_steps": 2, "greedy_tokens": 2, "general_docs": 2})
def fact_injection(params: FactInjectionParams, ctx: RunContext) -> list[dict]:
    """Fine-tune on a sentence stating a new fact one optimiser step at a time; per step and layer the
    gradient, update and cumulative weight-change norms, per step the new answer's probability and whether
    greedy decoding produces it; finally the general-text loss against the unedited model
    (seeds.md D.8 "Fact injection", "Freeze / unfreeze", "Afterwards"). Trains a deep copy; Adam without
    weight decay (or SGD), one example per step, dropout off."""
    from tasks.editing.compute import encode_texts, text_loss
    from tasks.editing.data import general_texts
    from tasks.editing.finetune import normalise_layers, prepare_model
    from tasks.probing import compute

    model, tokenizer = _model_and_tokenizer(params, ctx)
    statement = params.statement or f"{params.question} {params.answer.strip()}."
    method = "full" if params.trainable_layers is None else "layers"
    trained = prepare_model(model, method, trainable_layers=params.trainable_layers, seed=ctx.seed)
    layer_set = "all" if params.trainable_layers is None else ",".join(
        str(i) for i in normalise_layers(params.trainable_layers, len(compute.layer_groups(model)) - 1))
    steps, layer_rows = compute.injection_run(
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
    return _uniform(rows)
