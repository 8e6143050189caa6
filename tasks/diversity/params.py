"""Parameter models of the diversity family (O'Mahony et al. 2024; defaults of lauraaisling/analyse-llms,
quirks of the original behind named options)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchestrator.registry import TaskParams


class FinetuneParams(TaskParams):
    base_model: str = "tiny-gpt2-pretrained"
    """The model to fine-tune (any name `load_causal_lm` takes). Not called `model`: a stage that needs
    this one is matched to it on the parameters both set, and its `model` is `upstream:<this stage>`."""
    text: str = "narrow"
    """What to train on: "narrow" (the family's narrow text), "corpus" (the common tiny corpus) or a .txt file."""
    steps: int = Field(100, ge=1)
    lr: float = Field(3e-3, gt=0)
    train_block_size: int = Field(32, ge=2)
    """Tokens per training window."""
    train_batch_size: int = Field(8, ge=1)
    """Windows per step. (`train_` names: stages that need this one are matched on the names both set.)"""
    eval_every: int = Field(10, ge=1)
    """Report the losses every this many steps (and after the last)."""
    eval_docs: int | None = Field(None, ge=1)
    """How many built-in general documents the general-text loss reads (None: all)."""


class NextTokenParams(TaskParams):
    model: str = "tiny-gpt2"
    dataset: str = "builtin"
    text_field: str = "text"
    max_docs: int | None = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    max_length: int | None = Field(None, ge=2)
    context_len: int = Field(1, ge=1)
    per_document: bool = True
    prefix: Literal["bos", "original"] = "bos"
    stats_positions: Literal["predicted", "all"] = "predicted"
    zero_eps: float | None = Field(None, gt=0)
    entropy_aggregate: Literal["tokens", "first_document"] = "tokens"
    mean_probs_weighting: Literal["window", "token"] = "window"
    mean_probs_flush_every: int | None = Field(None, ge=1)


class CompletionsParams(TaskParams):
    model: str = "tiny-gpt2"
    prompt_set: str = "creative"
    prompts_file: str | None = None
    max_prompts: int | None = Field(None, ge=1)
    template: str = "plm"
    temperature: float = Field(1.0, gt=0)
    n_samples: int = Field(25, ge=1)
    batch_size: int = Field(25, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    top_k: int | None = Field(50, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    keep_double_bos: bool = False


class OutputDiversityParams(TaskParams):
    model: str = "tiny-gpt2"
    prompt_set: str = "creative"
    temperature: float = Field(1.0, gt=0)
    completions_stage: str = "completions"
    completions_file: str | None = None
    max_num_words: int | None = Field(20, ge=1)
    embedder: str | None = "minilm"
    jaccard_n: tuple[int, ...] = (2, 3, 4)
    order_q: tuple[int, ...] = (2, 3, 4, 5, 6)
    order_q_samples: int = Field(50, ge=1)
    distinct_n: tuple[int, ...] = (1, 2, 3)
    cosine_denominator: Literal["pairs", "nonzero"] = "pairs"
    empty_target: Literal["skip", "nan"] = "skip"
    jaccard_self_similarity: Literal["one", "jaccard"] = "one"
    swap_creative_factual_keys: bool = False
