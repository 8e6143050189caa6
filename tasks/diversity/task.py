"""Diversity tasks: next-token statistics, sampled completions, and their output diversity.

Reproduces the measurements of O'Mahony et al. 2024, "Attributing Mode Collapse in the Fine-Tuning of
Large Language Models" (Pythia base / SFT / DPO): how fine-tuning changes the next-token distribution on
held-out text, and how diverse sampled completions are across temperatures. Params in
`tasks.diversity.params`, the maths in `tasks.diversity.ops`; these adapters turn params into rows.

Stages: `diversity.next_token` (one run per model); `diversity.completions` (one run per model, prompt
set and temperature: n samples for each prompt, kept as rows and as `completions.jsonl`);
`diversity.output_diversity` (needs the completions stage, or reads a completions file; one row per
prompt). Scoring is its own stage so that re-scoring (another word cap, another embedder, the original's
quirks) reuses the stored completions instead of sampling again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.common.setup import LMSetup, lm_setup
from tasks.diversity.params import CompletionsParams, FinetuneParams, NextTokenParams, OutputDiversityParams

__all__ = ["CompletionsParams", "FinetuneParams", "NextTokenParams", "OutputDiversityParams", "completions",
           "finetune", "load", "load_embedder", "next_token", "output_diversity"]

UPSTREAM_MODEL = "upstream:"  # `model: upstream:<stage>`: the model a `diversity.finetune` run of <stage> saved
FINETUNED_DIR = "model"  # where `diversity.finetune` saves it, in its artifact directory


def load(params: Any, ctx: RunContext) -> LMSetup:
    """The causal LM and tokenizer of `params.model` (this family's built-ins or any name
    `tasks.common.models.load_causal_lm` takes), once per worker and model name; `upstream:<stage>` is
    the model the matching run of stage <stage> (a `diversity.finetune` stage this one needs) saved."""
    from tasks.common.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_location(params.model, ctx), device=ctx.device)
    return LMSetup(model, tokenizer, ctx.device)


def model_location(model: str, ctx: RunContext) -> str:
    """`model` itself, or for `upstream:<stage>` the directory of the model that stage's run saved."""
    if not model.startswith(UPSTREAM_MODEL):
        return model
    stage = model.removeprefix(UPSTREAM_MODEL)
    directory = ctx.upstream_one(stage).artifact_dir / FINETUNED_DIR
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model={model!r}: the upstream run of stage '{stage}' saved no model ({directory} is missing); "
            "is that stage a diversity.finetune stage?")
    return str(directory)


def _seed_for(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from the run seed and item keys (a prompt index, say)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------------


@task(
    "diversity.finetune",
    params=FinetuneParams,
    version=1,
    resources={"num_cpus": 1},
    smoke={"steps": 2, "eval_every": 1, "eval_docs": 2, "train_batch_size": 2, "train_block_size": 8},
)
def finetune(params: FinetuneParams, ctx: RunContext) -> dict[str, Any]:
    """Fine-tune all weights of `base_model` on a narrow text inside the sweep, reporting its learning curve.

    The offline stand-in for the original's SFT / DPO checkpoints (`ops.finetune.finetune_on_text`:
    AdamW at a constant `lr`, `train_batch_size` random `train_block_size`-token windows of the text per
    step, seeded by the run seed).
    Every `eval_every` steps and after the last, `ctx.report` records `train_loss` (mean since the last
    report), `narrow_loss` (the text's first windows, fixed) and `general_loss` (the family's built-in
    general documents): the narrow loss falls while the general loss rises as the model narrows.
    The model and tokenizer are saved to `model/` in the artifact directory; a later stage that `needs`
    this one loads it with `model: upstream:<this stage's name>`. Row: the final losses, before and after.
    """
    import torch

    from tasks.common.models import load_causal_lm
    from tasks.common.nll import encode_texts, text_loss
    from tasks.diversity.data import read_documents
    from tasks.diversity.models import training_text
    from tasks.diversity.ops.finetune import finetune_on_text

    model, tokenizer = load_causal_lm(params.base_model, device=ctx.device)
    text = training_text(params.text)
    narrow = _windows(tokenizer(text, add_special_tokens=False).input_ids, params.train_block_size, count=8)
    general = encode_texts(tokenizer, list(read_documents("builtin", max_docs=params.eval_docs)),
                           params.train_block_size)

    def losses() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            result = {"narrow_loss": text_loss(model, narrow, ctx.device)[0],
                      "general_loss": text_loss(model, general, ctx.device)[0]}
        model.train()
        return result

    before = losses()
    since_report: list[float] = []

    def after_step(step: int, loss: float) -> None:
        since_report.append(loss)
        if step % params.eval_every == 0 or step == params.steps:
            ctx.report(step=step, train_loss=float(np.mean(since_report)), **losses())
            since_report.clear()

    finetune_on_text(model, tokenizer, text, steps=params.steps, lr=params.lr, seed=ctx.seed,
                     block_size=params.train_block_size, batch_size=params.train_batch_size, after_step=after_step)
    after = losses()
    model.save_pretrained(ctx.artifact_dir / FINETUNED_DIR)
    tokenizer.save_pretrained(ctx.artifact_dir / FINETUNED_DIR)
    return {**after, **{f"{key}_before": value for key, value in before.items()}, "steps": params.steps}


def _windows(ids: list[int], block_size: int, count: int) -> list[list[int]]:
    """The first `count` consecutive `block_size`-token windows of `ids` (repeated until long enough)."""
    if not ids:
        raise ValueError("the fine-tuning text tokenises to nothing")
    while len(ids) < block_size * count:
        ids = ids + ids
    return [ids[i * block_size : (i + 1) * block_size] for i in range(count)]


# ---------------------------------------------------------------------------------------------------


@task(
    "diversity.next_token",
    params=NextTokenParams,
    version=2,  # 2: empty documents never give the first-document entropy nor flush (as the original)
    setup=load,
    setup_keys=("model",),
    setup_upstream=True,
    resources={"num_cpus": 1},
    smoke={"max_docs": 2, "batch_size": 2, "max_length": 16},
)
def next_token(params: NextTokenParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Per-document and per-model next-token statistics: perplexity, entropy, confidence, average distribution.

    As the original's compute_data.py, calc_perplexity.py and save_results.py. Documents stream
    from `dataset` ("builtin", or a .jsonl / .jsonl.zst / .txt file such as the Pile validation split),
    the first `max_docs`; each is cut into rolling windows of `max_length` tokens (None: the model's
    context, at most 1024 as in the original) batched `batch_size` at a time with pads masked.
    Rows: one per document (level="document", unless per_document=False) and one level="model" row with
    perplexity (token-weighted), entropy, confidence (mean over documents), top-1 accuracy, bits per
    byte and vocab_share_70 / vocab_share_90 (share of the logits width holding 70% / 90% of the average
    next-token distribution, whose values go to `mean_probs.npy`).
    Fixed quirks and the options that restore them: prefix="original" (the id of "<|endoftext|>", the
    unknown id on Llama, plus the tokenizer's own BOS), stats_positions="all", zero_eps=1e-7,
    entropy_aggregate="first_document", mean_probs_flush_every=500.
    """
    from tasks.diversity import ops
    from tasks.diversity.data import read_documents
    from tasks.diversity.models import context_length

    model, tokenizer = lm_setup(ctx, params, load)
    max_length = params.max_length or min(1024, context_length(model) or 1024)
    prefix_id, add_special = _prefix(tokenizer, params.prefix)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    documents = (
        (tokenizer(text, add_special_tokens=add_special).input_ids, len(text.encode("utf-8")))
        for text in read_documents(params.dataset, params.text_field, params.max_docs)
    )
    options = ops.NextTokenOptions(
        stats_positions=params.stats_positions,
        zero_eps=params.zero_eps,
        entropy_aggregate=params.entropy_aggregate,
        mean_probs_weighting=params.mean_probs_weighting,
        mean_probs_flush_every=params.mean_probs_flush_every,
    )
    doc_rows, model_row, mean_probs = ops.next_token_statistics(
        model, documents, prefix_id, pad_id, max_length, params.batch_size, params.context_len, options
    )
    if mean_probs is not None:
        np.save(ctx.artifact_dir / "mean_probs.npy", mean_probs.astype(np.float32))
    rows = (doc_rows if params.per_document else []) + [model_row]
    columns = list(dict.fromkeys(key for row in [model_row, *doc_rows[:1]] for key in row))
    return [{**{key: row.get(key) for key in columns}, "window_length": max_length} for row in rows]


def _prefix(tokenizer: Any, prefix: str) -> tuple[int, bool]:
    """(prefix token id, add the tokenizer's special tokens) for prefix "bos" or "original"."""
    if prefix == "bos":
        prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        add_special = False
    else:
        prefix_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        add_special = True
    if prefix_id is None:
        prefix_id = 0  # the original's fallback: the unknown-token id of the Llama tokenizer
    return prefix_id, add_special


# ---------------------------------------------------------------------------------------------------


@task(
    "diversity.completions",
    params=CompletionsParams,
    version=1,
    setup=load,
    setup_keys=("model",),
    setup_upstream=True,
    resources={"num_cpus": 1},
    smoke={"max_prompts": 1, "n_samples": 3, "batch_size": 3, "max_new_tokens": 6},
)
def completions(params: CompletionsParams, ctx: RunContext) -> list[dict[str, Any]]:
    """`n_samples` sampled completions of each prompt of a set at one temperature (creative_and_factual_completions.py).

    The full prompt is `template` (plm: "{prompt} {guide}", pythia_helpful, llama2_chat, tulu_v2, raw,
    or a format string) applied to the prompt and its guide; built-in creative / factual sets, or
    `prompts_file` (the original's prompts.jsonl). Sampling: temperature, then top_k (50: transformers'
    default, which the original got implicitly) and optional top_p; `max_new_tokens` new tokens (None:
    the prompt's own, 70 creative / 25 factual as in the original), capped by the model's context; stop at
    EOS; decode new tokens only, special tokens skipped. Each prompt draws from a generator seeded by
    (ctx.seed, prompt index), `batch_size` samples per forward batch: the same run gives the same texts
    (the original set no seed). The model's generation_config is not consulted.
    A prompt that already starts with the BOS string gets no second BOS unless keep_double_bos=True
    (the original's llama2-chat prompts began with two BOS tokens).
    Rows: one per completion (prompt_index, sample_index, text, n_new_tokens, ended_with_eos); the same
    texts go to `completions.jsonl` in the layout of the original's shipped completion file.
    """
    from tasks.diversity.data import load_prompts, write_completions
    from tasks.diversity.models import context_length

    model, tokenizer = lm_setup(ctx, params, load)
    n_ctx = context_length(model)
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for prompt in load_prompts(params.prompt_set, params.prompts_file, params.max_prompts):
        prompt_ids, max_new = _prompt_ids(tokenizer, prompt, params, n_ctx)
        samples = _samples(model, tokenizer, prompt_ids, max_new, params, _seed_for(ctx.seed, prompt.index))
        for sample_index, ids in enumerate(samples):
            completion = tokenizer.decode(ids, skip_special_tokens=True)
            rows.append(
                {
                    "prompt_index": prompt.index,
                    "sample_index": sample_index,
                    "text": completion,
                    "n_new_tokens": len(ids),
                    "ended_with_eos": len(ids) < max_new,
                }
            )
            records.append(
                {
                    "model": params.model,
                    "mode": params.prompt_set,
                    "temperature": params.temperature,
                    "prompt_index": prompt.index,
                    "sample_index": sample_index,
                    "text": completion,
                }
            )
    write_completions(ctx.artifact_dir / "completions.jsonl", records)
    return rows


def _prompt_ids(tokenizer: Any, prompt: Any, params: CompletionsParams, n_ctx: int | None) -> tuple[list[int], int]:
    """The prompt's ids (one BOS, unless keep_double_bos) and the number of new tokens that fit the context."""
    from tasks.diversity.data import format_prompt

    text = format_prompt(prompt, params.template)
    bos = tokenizer.bos_token
    add_special = params.keep_double_bos or not (bos and text.startswith(bos))
    prompt_ids = tokenizer(text, add_special_tokens=add_special).input_ids
    if not prompt_ids:
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    max_new = params.max_new_tokens or prompt.max_new_tokens
    if n_ctx is not None:
        max_new = min(max_new, n_ctx - len(prompt_ids))
        if max_new < 1:
            raise ValueError(
                f"prompt {prompt.index} has {len(prompt_ids)} tokens, no room in a {n_ctx}-token context")
    return prompt_ids, max_new


def _samples(model: Any, tokenizer: Any, prompt_ids: list[int], max_new: int, params: CompletionsParams,
             seed: int) -> list[list[int]]:
    """`params.n_samples` continuations of one prompt, `batch_size` per forward batch, from one seeded generator."""
    import torch

    from tasks.diversity import ops

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    samples: list[list[int]] = []
    while len(samples) < params.n_samples:
        n = min(params.batch_size, params.n_samples - len(samples))
        samples += ops.sample_continuations(
            model, prompt_ids, n, params.temperature, max_new, generator,
            top_k=params.top_k, top_p=params.top_p, eos_id=tokenizer.eos_token_id,
        )  # fmt: skip
    return samples


# ---------------------------------------------------------------------------------------------------


def load_embedder(params: Any, ctx: RunContext) -> LMSetup | None:
    """The encoder and tokenizer of `params.embedder`, or None when cosine metrics are off."""
    if params.embedder is None:
        return None
    from tasks.common.models import load_encoder

    encoder, tokenizer = load_encoder(params.embedder, device=ctx.device)
    return LMSetup(encoder, tokenizer, ctx.device)


@task(
    "diversity.output_diversity",
    params=OutputDiversityParams,
    version=1,
    setup=load_embedder,
    setup_keys=("embedder",),
    resources={"num_cpus": 1},
    smoke={"embedder": "tiny-bert", "max_num_words": 8, "order_q": [2], "order_q_samples": 5},
    smoke_upstream={"completions": ("diversity.completions",
                                    {"max_prompts": 1, "n_samples": 3, "batch_size": 3, "max_new_tokens": 6})},
)
def output_diversity(params: OutputDiversityParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Diversity metrics of each prompt's completions at one temperature (creative_and_factual_metrics.py).

    Completions come from the matching run of stage `completions_stage` (its `completions.jsonl`), or
    from `completions_file` filtered on model, prompt_set (the file's "mode") and temperature, e.g. the
    original's shipped pythia-2.8b completions. Each text is cut to its first `max_num_words` words
    (20 and 5 in the original). Metrics, with the original's names: selfBleuSmoothed,
    average_pairwise_ncd, average_pairwise_jaccard_{2,3,4}, avg_compression_ratio_{full,target},
    cosine_similarity, order_{q}_{jaccard_2,cosine}, vendi_{jaccard_2,cosine}; plus distinct_{1,2,3}
    (not in the original). Cosine metrics use `embedder` (mean-pooled; "minilm" is all-MiniLM-L6-v2, a
    labelled substitute for the original's all-MiniLM-L12-v2; None: NaN). Order-q estimates are seeded
    from (ctx.seed, prompt index). Original quirks behind options: cosine_denominator="nonzero",
    empty_target="nan", jaccard_self_similarity="jaccard", and swap_creative_factual_keys=True, which
    writes the original's swapped label (factual for creative and back) to `result_key`.
    Rows: one per prompt, with n_texts, mean_words and n_empty.
    """
    from tasks.diversity import ops

    cells = _completions(params, ctx)
    options = ops.MetricOptions(
        jaccard_n=params.jaccard_n,
        order_q=params.order_q,
        order_q_samples=params.order_q_samples,
        distinct_n=params.distinct_n,
        cosine_denominator=params.cosine_denominator,
        empty_target=params.empty_target,
        jaccard_self_similarity=params.jaccard_self_similarity,
    )
    result_key = params.prompt_set
    if params.swap_creative_factual_keys:
        result_key = {"creative": "factual", "factual": "creative"}.get(result_key, result_key)
    embedder = ctx.setup if ctx.setup is not None else load_embedder(params, ctx)
    rows = []
    for prompt_index, texts in cells.items():
        if params.max_num_words is not None:
            texts = [ops.limit_num_words(t, params.max_num_words) for t in texts]
        embeddings = None
        if embedder is not None:
            encoder, enc_tokenizer = LMSetup.of(embedder)
            embeddings = ops.mean_pooled_embeddings(encoder, enc_tokenizer, texts)
        metrics = ops.diversity_metrics(texts, embeddings, options, seed=_seed_for(ctx.seed, prompt_index))
        rows.append(
            {
                "prompt_index": prompt_index,
                "result_key": result_key,
                "n_texts": len(texts),
                "mean_words": float(np.mean([len(t.split()) for t in texts])),
                "n_empty": sum(1 for t in texts if not t.strip()),
                **metrics,
            }
        )
    return rows


def _completions(params: OutputDiversityParams, ctx: RunContext) -> dict[int, list[str]]:
    """prompt index -> texts: from `completions_file` (filtered) or the upstream completions run."""
    from tasks.diversity.data import read_completions

    if params.completions_file is not None:
        cells = read_completions(params.completions_file, params.model, params.prompt_set, params.temperature)
        if not cells:
            raise ValueError(
                f"{params.completions_file}: no completions for model={params.model!r}, "
                f"prompt_set={params.prompt_set!r}, temperature={params.temperature}"
            )
        return cells
    upstream = ctx.upstream_one(params.completions_stage)
    return read_completions(upstream.artifact_dir / "completions.jsonl")
