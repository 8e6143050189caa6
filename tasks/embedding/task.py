"""Adapter: params in, a text set and its per-layer hidden states out (artifacts), one row per layer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.context import RunContext
from orchestrator.registry import TaskParams, task


class HiddenStatesParams(TaskParams):
    model: str = "tiny-bert"  # a built-in name (tiny-bert, minilm), a local directory or a hub id
    source: str = "synthetic"  # synthetic | imdb | path to .jsonl / .csv / .tsv with text and label
    n_train: int = Field(100, ge=0)
    n_test: int = Field(0, ge=0)
    max_tokens: int = Field(112, ge=1)  # keep texts with fewer tokens (no special tokens); original 240
    max_length: int = Field(128, ge=2)  # positions stored per text; original 256
    layer: int | list[int] = 0  # hidden_states index, 0 = embedding output; a list writes one file each
    batch_size: int = Field(32, ge=1)
    padding: Literal["max_length", "longest"] = "max_length"
    sort_by_length: bool = True
    storage_dtype: Literal["float32", "float16"] = "float32"
    stratify: bool = True
    text_field: str = "text"
    label_field: str = "label"

    @model_validator(mode="after")
    def _check(self) -> HiddenStatesParams:
        if self.n_train + self.n_test == 0:
            raise ValueError("n_train + n_test must be > 0, got 0")
        if self.max_tokens + 1 > self.max_length:
            raise ValueError(f"max_tokens + 2 special tokens must fit in max_length: max_tokens={self.max_tokens}, "
                             f"max_length={self.max_length}")
        if isinstance(self.layer, list) and (not self.layer or min(self.layer) < 0):
            raise ValueError(f"layer must be an int >= 0 or a non-empty list of them, got layer={self.layer}")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got layer={self.layer}")
        return self

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.layer)) if isinstance(self.layer, list) else [self.layer]


def load_encoder(params: HiddenStatesParams, ctx: RunContext) -> Any:
    """(model, tokenizer) on ctx.device; reused by every run with the same `model`."""
    from tasks.common.models import load_encoder as load

    return load(params.model, device=ctx.device)


@task("embedding.hidden_states", params=HiddenStatesParams, version=1, setup=load_encoder,
      setup_keys=("model",), resources={"num_cpus": 1},
      smoke={"model": "tiny-bert", "n_train": 4, "n_test": 2, "max_tokens": 24, "max_length": 32, "layer": [0, 2]})
def hidden_states(params: HiddenStatesParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Hidden states of encoder layer(s) for a balanced labelled text set (Bombari and Mondelli 2024, A.2).

    Builds the text set (data.build_text_set: the first texts of each class shorter than max_tokens,
    shuffled with ctx.seed), runs the encoder once for all requested layers (batched, sorted by length,
    inference mode, ctx.device) and writes `layer{L}.safetensors` per layer plus texts.jsonl and meta.json
    (artifacts.py). Rows: one per layer with sizes (timings go to meta.json, so rows are deterministic).
    """
    import torch

    from tasks.common import artifacts
    from tasks.embedding import compute
    from tasks.embedding.data import build_text_set

    model, tokenizer = ctx.setup
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and params.max_length > positions:
        raise ValueError(f"max_length={params.max_length} exceeds the model's {positions} positions")

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    texts = build_text_set(params.source, params.n_train, params.n_test, count_tokens,
                           max_tokens=params.max_tokens, seed=ctx.seed, stratify=params.stratify,
                           text_field=params.text_field, label_field=params.label_field)
    enc = compute.hidden_states(model, tokenizer, texts.texts, params.layers, max_length=params.max_length,
                                batch_size=params.batch_size, padding=params.padding,
                                sort_by_length=params.sort_by_length,
                                storage_dtype=getattr(torch, params.storage_dtype))
    labels = torch.tensor(texts.labels, dtype=torch.long)
    is_test = torch.tensor([s == "test" for s in texts.splits], dtype=torch.long)
    meta = {"model": params.model, "source": params.source, "max_length": str(params.max_length),
            "padding": params.padding, "width": str(model.config.hidden_size),
            "depth": str(model.config.num_hidden_layers)}
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
    timing = {"seconds": enc.seconds, "tokens_per_s": enc.real_tokens / enc.seconds}
    ctx.logger.info("embedded %d texts (%d tokens) in %.2f s", len(texts), enc.real_tokens, enc.seconds)
    artifacts.write_json(ctx.artifact_dir / "meta.json", {**meta, "layers": params.layers, "n_train": params.n_train,
                                                           "n_test": params.n_test, "timing": timing})
    return rows
