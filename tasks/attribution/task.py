"""Attribution tasks: ReAGent and seven baselines scored by Soft-NS / Soft-NC (Zhao and Shan 2024).

- `attribution.analogies`: token level; one target per analogy prompt (see `tasks.attribution.data`).
- `attribution.sequence`: sequence level; greedy generation of `max_new_tokens` per prompt, every
  `stride`-th generated token attributed (the original attributed every token and scored every
  stride-th; only the scored ones are attributed here).
- `attribution.planted`: a check, not in the paper: the copy task of `tasks.attribution.planted`,
  where the answer sits at a known position (model "tiny-gpt2-copy", trained on first use).
Rows: one per (example, target token) for this run's method: soft_ns, soft_nc and the same for a
random attribution (random_soft_ns, random_soft_nc), with the example and token text. Aggregates
(log ratios per method, per example) are in `tasks.attribution.report`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.attribution.params import AnalogyParams, AttributionParams, PlantedParams, SequenceParams
from tasks.common.setup import LMSetup, lm_setup

__all__ = ["AnalogyParams", "AttributionParams", "PlantedParams", "SequenceParams", "analogies", "load",
           "planted_copy", "sequence"]

def load(params: AttributionParams, ctx: RunContext) -> LMSetup:
    """The causal LM and tokenizer (eager attention, so attention baselines get weights); samplers are
    memoised on the setup. Every name `tasks.common.models.load_causal_lm` takes, including this family's
    built-in "tiny-gpt2-copy" (the planted model)."""
    from tasks.common.models import load_causal_lm

    model, tokenizer = load_causal_lm(params.model, device=ctx.device, dtype=params.dtype, attn_implementation="eager")
    return LMSetup(model, tokenizer, ctx.device)


def max_positions(model: Any) -> int | None:
    """The longest input the model's position table allows (None: no limit known)."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _sampler(setup: LMSetup, params: AttributionParams, device: str) -> tuple[Any, str]:
    from tasks.attribution.ops.samplers import make_sampler

    key = ("sampler", params.sampler, params.pos_tagger, params.pos_tag_map)
    # a memo of immutable tables on the setup: nothing leaks between runs
    return setup.cached(key, lambda: make_sampler(params.sampler, setup.model, setup.tokenizer, params.pos_tagger,
                                                  params.pos_tag_map, device))


def _score(
    setup: LMSetup, params: AttributionParams, ctx: RunContext,
    items: list[tuple[dict[str, Any], list[int], int]], method: str, normalization: str,
    extra: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Attribute and score each (row fields, prefix ids, target id); one row each."""
    import torch

    from tasks.attribution.ops import attribute
    from tasks.attribution.ops.reagent import ReagentConfig

    model, tokenizer = setup.model, setup.tokenizer
    device = next(model.parameters()).device
    items = _fitting(items, model, ctx)
    gen_attr = torch.Generator(device=device).manual_seed(ctx.seed)
    gen_metric = torch.Generator(device=device).manual_seed(ctx.seed + 1)
    sampler, sampler_used = (None, "")
    cfg = None
    if method == "reagent":
        sampler, sampler_used = _sampler(setup, params, str(device))
        cfg = ReagentConfig(params.keep_top_n, params.keep_ratio, params.stop_top_k, params.replace_ratio,
                            params.max_steps, params.num_probes, params.overlap_threshold, params.on_no_convergence)
    chunk = params.target_batch if method == "reagent" else 1
    rows, saved = [], []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        prefixes = [torch.tensor(p, dtype=torch.long, device=device) for _, p, _ in part]
        t0 = time.perf_counter()
        attrs = attribute(method, model, tokenizer, prefixes, [y for _, _, y in part], reagent_config=cfg,
                          sampler=sampler, generator=gen_attr, seed=ctx.seed + start, normalization=normalization,
                          internal_batch_size=params.internal_batch_size)
        seconds = (time.perf_counter() - t0) / len(part)
        for (fields, _, y), ids, a in zip(part, prefixes, attrs, strict=True):
            rows.append(_row(model, params, fields, y, ids, a, gen_metric, device, sampler_used, seconds, extra))
            saved.append({**{k: fields[k] for k in fields if k.endswith(("_id", "_pos", "_index"))},
                          "scores": [float(s) for s in a.scores]})
    (ctx.artifact_dir / "importance.json").write_text(json.dumps(saved))
    return rows


def _fitting(items: list[tuple[dict[str, Any], list[int], int]], model: Any, ctx: RunContext) -> list[Any]:
    """The items whose prefix fits the model's position table (a warning names how many are dropped)."""
    limit = max_positions(model)
    if limit is not None and any(len(p) > limit for _, p, _ in items):
        ctx.logger.warning("dropping %d targets whose prefix exceeds the model's %d positions",
                           sum(len(p) > limit for _, p, _ in items), limit)
        items = [it for it in items if len(it[1]) <= limit]
    return items


def _row(model: Any, params: AttributionParams, fields: dict[str, Any], y: int, ids: Any, a: Any, gen_metric: Any,
         device: Any, sampler_used: str, seconds: float,
         extra: Callable[[dict[str, Any], Any], dict[str, Any]] | None) -> dict[str, Any]:
    """One target's row: Soft-NS / Soft-NC of its attribution and of a random one (drawn from gen_metric)."""
    from tasks.attribution.ops.metrics import random_scores, soft_metrics

    rand = random_scores(len(ids), gen_metric, device)
    own, rnd = soft_metrics(model, ids, [a.scores, rand], gen_metric, params.distance)
    return {
        **fields, "method": params.method, "target_id": int(y), "prefix_len": len(ids),
        "soft_ns": own.soft_ns, "soft_nc": own.soft_nc,
        "random_soft_ns": rnd.soft_ns, "random_soft_nc": rnd.soft_nc,
        "n_steps": a.n_steps, "converged": a.converged,
        "rationale": None if a.rationale is None else ",".join(map(str, a.rationale)),
        "sampler_used": sampler_used or None, "attr_seconds": seconds,
        **(extra(fields, a.scores) if extra is not None else {}),
    }


@task("attribution.planted", params=PlantedParams, version=1, setup=load, setup_keys=("model", "dtype"),
      resources={"num_cpus": 1}, smoke={"n_examples": 2, "max_steps": 10, "num_probes": 2},
      measured=("attr_seconds",))
def planted_copy(params: PlantedParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Planted-answer check: attribute the copy model's answer; a faithful method finds the marked token."""
    import torch

    from tasks.attribution import planted

    setup = lm_setup(ctx, params, load)
    tokenizer = setup.tokenizer
    x, y, pos = planted.copy_batch(params.n_examples, torch.Generator().manual_seed(ctx.seed))
    items = [({"example_id": i, "example_text": "|".join(tokenizer.decode([t]) for t in x[i].tolist()),
               "target_pos": planted.LENGTH, "target_token": tokenizer.decode([int(y[i])]), "marked_pos": int(pos[i])},
              x[i].tolist(), int(y[i])) for i in range(params.n_examples)]

    def marked(fields: dict[str, Any], scores: Any) -> dict[str, Any]:
        p = fields["marked_pos"]
        return {"mass_on_marked": float(scores[p]), "top_is_marked": int(scores[:-1].argmax()) == p}

    return _score(setup, params, ctx, items, params.method, params.normalization, extra=marked)


@task("attribution.analogies", params=AnalogyParams, version=1, setup=load, setup_keys=("model", "dtype"),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "max_examples": 2, "require_correct": False, "max_steps": 10, "num_probes": 2},
      measured=("attr_seconds",))
def analogies(params: AnalogyParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Token-level ReAGent experiment: attribute the last word of each analogy prompt, score Soft-NS/NC."""
    from tasks.attribution import data

    setup = lm_setup(ctx, params, load)
    model, tokenizer = setup
    if params.dataset.endswith(".jsonl"):
        examples = data.read_prepared(params.dataset, tokenizer)
    else:
        examples = data.prepare_analogies(
            model, tokenizer, data.analogy_lines(params.dataset), params.single_token_rule, params.currency_patch,
            params.require_correct, params.target_position, params.categories, next(model.parameters()).device,
        )
    examples = examples[: params.max_examples]
    items = [({"example_id": e.id, "category": e.category, "pair_idx": e.pair_idx, "example_text": e.text,
               "target_pos": len(e.prefix), "target_token": e.target_text, "relative_pos": e.relative_pos,
               "distractor_start": e.distractor_start, "distractor_end": e.distractor_end},
              list(e.prefix), e.target) for e in examples]
    return _score(setup, params, ctx, items, params.method, params.normalization)


@task("attribution.sequence", params=SequenceParams, version=1, setup=load, setup_keys=("model", "dtype"),
      resources={"num_cpus": 1},
      smoke={"model": "tiny-gpt2", "max_prompts": 1, "max_new_tokens": 3, "max_steps": 10, "num_probes": 2},
      measured=("attr_seconds",))
def sequence(params: SequenceParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Sequence-level ReAGent experiment: greedy continuation of each prompt, every stride-th token scored."""
    import torch

    from tasks.attribution import data

    setup = lm_setup(ctx, params, load)
    model, tokenizer = setup
    device = next(model.parameters()).device
    prompts = data.read_prompts(params.prompts)[: params.max_prompts]
    limit = max_positions(model)
    items = []
    for prompt_id, prompt in enumerate(prompts):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
        if limit is not None and ids.shape[1] + params.max_new_tokens > limit:
            ctx.logger.warning("skipping prompt %d: %d tokens + %d new exceed %d positions", prompt_id,
                               ids.shape[1], params.max_new_tokens, limit)
            continue
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=params.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)[0].tolist()
        generated_text = tokenizer.decode(out)
        for pos in range(ids.shape[1], len(out), params.stride):
            fields = {"prompt_id": prompt_id, "example_text": prompt, "generated_text": generated_text,
                      "target_index": pos - ids.shape[1], "target_pos": pos,
                      "target_token": tokenizer.decode([out[pos]])}
            items.append((fields, out[:pos], out[pos]))
    method, normalization = params.method, params.normalization
    if params.original_sequence_attention and method == "attention":
        method, normalization = "attention_last", "sum"
    return _score(setup, params, ctx, items, method, normalization)
