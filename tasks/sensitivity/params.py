"""Parameter models of the sensitivity family (Bombari and Mondelli 2024; defaults of the original sweeps)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.registry import TaskParams


class SensitivityCommon(TaskParams):
    """Settings shared by both experiments."""

    dataset: Literal["synthetic", "upstream"] = "synthetic"  # upstream: embeddings of the `needs` stage
    d: int = Field(32, ge=1)  # embedding width used (first d coordinates of upstream embeddings)
    n: int = Field(10, ge=1)  # context length (first n token rows)
    lr: float | None = Field(None, gt=0)  # None: the original's value for the map
    steps: int | None = Field(None, ge=0)  # None: 300 for rf/drf, 50 * n for the attention maps
    repetitions: int = Field(1, ge=1)  # independent draws (weights, sample, noise) in this run
    seed: int = 0  # repetitions' seeds derive from ctx.seed (= this, under the orchestrator)
    layer: int = Field(0, ge=0)  # upstream: which layer's embeddings (matched with the embedding stage)
    rows: Literal["all", "real"] = "all"  # upstream: first n rows as the original, or only texts >= n tokens
    split: Literal["all", "train", "test"] = "all"  # upstream: which texts to draw from
    upstream_stage: str = "embed"
    max_weight_gb: float = Field(16.0, gt=0)  # refuse dense matrices larger than this


class WordSensitivityParams(SensitivityCommon):
    map: Literal["rf", "drf", "raf", "raf_relu"] = "raf"
    L: int = Field(1, ge=1)  # DRF depth; 1 for the other maps
    token_index: int | Literal["max"] = 0  # the token perturbed; "max": every token, keep the largest S
    ball_center: Literal["x0", "noisy_start"] = "x0"  # the paper's ball, or the original code's (quirk 2)
    init_noise: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> WordSensitivityParams:
        if self.map != "drf" and self.L != 1:
            raise ValueError(f"L is the depth of drf; map={self.map} needs L=1, got L={self.L}")
        if isinstance(self.token_index, int) and not 0 <= self.token_index < self.n:
            raise ValueError(f"token_index must be in [0, n={self.n}) or 'max', got token_index={self.token_index}")
        return self


class GeneralisationParams(SensitivityCommon):
    map: Literal["rf", "raf", "raf_relu"] = "raf"
    training: Literal["fine_tuning", "total"] = "fine_tuning"
    optim: Literal["loss", "feat_align", "features"] = "loss"
    d: int = Field(16, ge=1)
    n: int = Field(5, ge=1)
    N: int = Field(40, ge=1)  # training samples; the original: 1100 to 1300 with d = 768
    token_index: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GeneralisationParams:
        if self.token_index >= self.n:
            raise ValueError(f"token_index must be in [0, n={self.n}), got token_index={self.token_index}")
        return self
