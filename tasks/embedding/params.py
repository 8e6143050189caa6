"""Parameter models of the embedding family (Bombari and Mondelli 2024, make_bert_embeddings.py defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.registry import TaskParams


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
