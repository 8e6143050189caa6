"""Adapter: params in, a text set and its per-layer hidden states out (artifacts), one row per layer."""

from __future__ import annotations

from typing import Any

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.common.setup import LMSetup, lm_setup
from tasks.embedding.params import HiddenStatesParams

__all__ = ["HiddenStatesParams", "hidden_states", "load"]


def load(params: HiddenStatesParams, ctx: RunContext) -> LMSetup:
    """The encoder and tokenizer on ctx.device; reused by every run with the same `model`."""
    from tasks.common.models import load_encoder

    model, tokenizer = load_encoder(params.model, device=ctx.device)
    return LMSetup(model, tokenizer, ctx.device)


@task("embedding.hidden_states", params=HiddenStatesParams, version=1, setup=load,
      setup_keys=("model",), resources={"num_cpus": 1},
      smoke={"model": "tiny-bert", "n_train": 4, "n_test": 2, "max_tokens": 24, "max_length": 32, "layer": [0, 2]})
def hidden_states(params: HiddenStatesParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Hidden states of encoder layer(s) for a balanced labelled text set (Bombari and Mondelli 2024).

    Builds the text set (data.build_text_set: the first texts of each class shorter than max_tokens,
    shuffled with ctx.seed), runs the encoder once for all requested layers (batched, sorted by length,
    inference mode, ctx.device) and writes `layer{L}.safetensors` per layer plus texts.jsonl and meta.json
    (tasks.common.artifacts). Rows: one per layer with sizes (timings go to meta.json, so rows are deterministic).
    """
    import torch

    from tasks.common.artifacts import write_json
    from tasks.embedding.data import build_text_set
    from tasks.embedding.ops.hidden_states import hidden_states as encode

    model, tokenizer = lm_setup(ctx, params, load)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and params.max_length > positions:
        raise ValueError(f"max_length={params.max_length} exceeds the model's {positions} positions")

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    texts = build_text_set(params.source, params.n_train, params.n_test, count_tokens,
                           max_tokens=params.max_tokens, seed=ctx.seed, stratify=params.stratify,
                           text_field=params.text_field, label_field=params.label_field)
    enc = encode(model, tokenizer, texts.texts, params.layers, max_length=params.max_length,
                 batch_size=params.batch_size, padding=params.padding, sort_by_length=params.sort_by_length,
                 storage_dtype=getattr(torch, params.storage_dtype))
    rows = _write_layers(ctx, params, model, texts, enc)
    timing = {"seconds": enc.seconds, "tokens_per_s": enc.real_tokens / enc.seconds}
    ctx.logger.info("embedded %d texts (%d tokens) in %.2f s", len(texts), enc.real_tokens, enc.seconds)
    write_json(ctx.artifact_dir / "meta.json", {**_meta(params, model), "layers": params.layers,
                                                "n_train": params.n_train, "n_test": params.n_test, "timing": timing})
    return rows


def _meta(params: HiddenStatesParams, model: Any) -> dict[str, str]:
    return {"model": params.model, "source": params.source, "max_length": str(params.max_length),
            "padding": params.padding, "width": str(model.config.hidden_size),
            "depth": str(model.config.num_hidden_layers)}


def _write_layers(
    ctx: RunContext, params: HiddenStatesParams, model: Any, texts: Any, enc: Any
) -> list[dict[str, Any]]:
    """Write `layer{L}.safetensors` per layer and texts.jsonl; one row per layer."""
    import torch

    from tasks.common import artifacts

    labels = torch.tensor(texts.labels, dtype=torch.long)
    is_test = torch.tensor([s == "test" for s in texts.splits], dtype=torch.long)
    meta = _meta(params, model)
    rows = []
    for layer in params.layers:
        path = artifacts.write_layer(
            ctx.artifact_dir, layer,
            {"hidden": enc.hidden[layer], "input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
             "labels": labels, "is_test": is_test, "n_computed": enc.n_computed},
            {**meta, "layer": str(layer)},
        )
        rows.append({"hidden_layer": layer, "n_texts": len(texts), "width": model.config.hidden_size,
                     "real_tokens": enc.real_tokens, "computed_tokens": enc.computed_tokens,
                     "file": path.name, "file_bytes": path.stat().st_size})
    artifacts.write_json(ctx.artifact_dir / "texts.jsonl",
                         [{"index": j, "split": s, "label": y, "tokens": k, "text": t} for j, (t, y, s, k) in
                          enumerate(zip(texts.texts, texts.labels, texts.splits, texts.token_counts, strict=True))],
                         lines=True)
    return rows
