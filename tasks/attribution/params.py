"""Parameter models of the attribution family (Zhao and Shan 2024, ReAGent; defaults of the original's configs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchestrator.registry import TaskParams

Method = Literal[
    "reagent", "norm", "gradient_shap", "integrated_gradients", "input_x_gradient",
    "attention", "attention_rollout", "attention_last",
]


class AttributionParams(TaskParams):
    """Settings shared by both levels. ReAGent defaults: the original's token-level config
    (top3_replace0.1_max5000_batch5: keep 8, tolerance 3, ratio 0.1, 5000 steps, 5 probes)."""

    model: str = "tiny-gpt2"
    dtype: str | None = None  # None: the checkpoint's default; "float64" as the original's evaluation
    method: Method = "reagent"
    seed: int = 0
    # ReAGent
    keep_top_n: int = Field(8, ge=0)
    keep_ratio: float = Field(0.0, ge=0, le=1)
    stop_top_k: int = Field(3, ge=0)
    replace_ratio: float = Field(0.1, ge=0, le=1)
    max_steps: int = Field(5000, ge=1)
    num_probes: int = Field(5, ge=1)
    overlap_threshold: int = Field(2, ge=0)
    on_no_convergence: Literal["mean_all", "nan"] = "mean_all"  # "nan": the original (Soft-NS 0, Soft-NC 1)
    sampler: Literal["pos", "uniform", "inferential"] = "pos"
    pos_tagger: Literal["auto", "nltk", "coarse"] = "auto"
    pos_tag_map: str | None = None  # JSON {tag: [ids]}; overrides pos_tagger
    target_batch: int = Field(8, ge=1)  # ReAGent targets run together
    # baselines and metrics
    normalization: Literal["original", "softmax", "sum"] = "original"
    internal_batch_size: int | None = Field(None, ge=1)  # integrated_gradients: points per backward (memory)
    distance: Literal["sq_hellinger_sqrt2", "hellinger"] = "sq_hellinger_sqrt2"


class AnalogyParams(AttributionParams):
    dataset: str = "builtin"  # "builtin", a questions-words-format file, or a prepared .jsonl
    max_examples: int | None = Field(None, ge=1)
    categories: list[str] | None = None
    single_token_rule: Literal["space_prefixed", "original", "none"] = "space_prefixed"
    currency_patch: Literal["by_value", "by_index", "none"] = "by_value"
    require_correct: bool = True
    target_position: Literal["last", "first_occurrence"] = "last"


class SequenceParams(AttributionParams):
    """Sequence-level ReAGent defaults: the stored results (keep 3, 5000 steps, 5 probes, stride 2)."""

    prompts: str = "builtin"  # "builtin" or a text file, one prompt per line
    max_prompts: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(10, ge=1)
    stride: int = Field(2, ge=1)
    keep_top_n: int = Field(3, ge=0)
    original_sequence_attention: bool = False  # True: "attention" = inseq's (last layer, no softmax)


class PlantedParams(AttributionParams):
    """ReAGent keeps 2 (the answer needs the marked token and the query) with tolerance 1: with keep 3
    of 8 tokens a random initial ranking often passes the stop check before learning anything."""

    model: str = "tiny-gpt2-copy"
    n_examples: int = Field(16, ge=1)
    keep_top_n: int = Field(2, ge=0)
    stop_top_k: int = Field(1, ge=0)
    replace_ratio: float = Field(0.3, ge=0, le=1)
    max_steps: int = Field(300, ge=1)
    sampler: Literal["pos", "uniform", "inferential"] = "uniform"
