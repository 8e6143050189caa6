"""Parameter models of the editing family: canonical-examples fine-tuning and the ensemble (Hewitt et al.
2024), ROME and causal tracing (Meng et al. 2022), MEMIT (Meng et al. 2023). Defaults are the originals';
cross-field checks are validators, so they fail at `plan`."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.registry import TaskParams
from tasks.editing.data import BUILTIN_DATASET


class FinetuneParams(TaskParams):
    model: str = "tiny-gpt2"
    dataset: str = "facts"  # country | company | gender | temporal | stereoset | verb | facts (built-in)
    split: Literal["val", "test"] = "val"
    method: Literal["full", "layers", "lora", "senses"] = "full"  # senses: Backpack models only
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(1, ge=1)
    grad_acc_steps: int = Field(5, ge=1)
    grad_acc_quirk: bool = False  # True: the original's zero_grad-every-batch accumulation
    kl_weight: float = Field(0.0, ge=0)  # the original sweeps draw 10^U(-1, 0)
    trainable_layers: list[int] | None = None  # method layers (default: last layer) or LoRA's block
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_layer_fraction: float = Field(0.5, gt=0, le=1)  # the original's block rule when no trainable_layers
    senses_per_example: int = Field(8, ge=1)  # k of the sense selection (original sweeps: U{5..11})
    sense_lambda: float = Field(1000.0, ge=0)  # lambda of S = A - lambda B (country: 10^U(2, 3.5))
    league: float | None = Field(None, gt=0)  # evaluate every epoch, report the last epoch inside the ball
    leagues: list[float] | None = None  # also report rows (level "league") for each of these balls, one run
    evaluate_every: int = Field(1, ge=0)  # epochs between evaluations in training (ctx.report); 0: the last only
    general_text: str = "builtin"  # builtin | val100 | path to a jsonl with `text`
    general_docs: int = Field(100, ge=1)  # texts of general_text for degradation G
    kl_docs: int = Field(100, ge=1)  # the next texts, for the KL regulariser R
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_hard_negative: int | None = Field(None, ge=1)
    hard_negative_split: Literal["val", "test"] | None = None  # "val" on test = the original's quirk
    hard_neg_tolerance: float = Field(math.log(1.5), ge=0)
    max_length: int = Field(512, ge=8)
    eval_batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _every_epoch_for_leagues(self) -> FinetuneParams:
        if (self.league or self.leagues) and self.evaluate_every != 1:
            raise ValueError(f"league / leagues pick an epoch, so every epoch is evaluated: evaluate_every must be 1, "
                             f"got {self.evaluate_every}")
        return self


class RomeParams(TaskParams):
    model: str = "tiny-gpt2"
    fact: int = Field(0, ge=0)  # index into the facts (built-in or counterfact_file), unless subject/... are given
    counterfact_file: str | None = None  # ROME's counterfact.json (list or jsonl); default: data.BUILTIN_FACTS
    subject: str | None = None
    prompt: str | None = None  # with "{}" for the subject
    target_new: str | None = None
    target_true: str | None = None  # default: the built-in fact's, else the unedited model's greedy token
    paraphrases: list[str] | None = None  # prompts with "{}"
    neighborhood: list[str] | None = None  # full prompts whose true answer is target_true
    layer: int | None = None  # default n_layers // 3 (gpt2-medium 8, gpt2-large 12 as the released hparams)
    v_num_grad_steps: int = Field(20, ge=1)
    v_lr: float = Field(0.5, gt=0)
    v_weight_decay: float = Field(0.5, ge=0)
    kl_factor: float = Field(0.0625, ge=0)
    clamp_norm_factor: float = Field(4.0, gt=0)
    mom2_adjustment: bool = True
    # (tokens, count) of sampled prefixes
    template_lengths: list[tuple[int, int]] = [(5, 10), (10, 10)]  # noqa: RUF012 - pydantic field
    context_templates: list[str] | None = None  # fixed templates with "{}" instead of sampled ones
    cov_text: str = "builtin"  # builtin | val100 | jsonl path: text for C = E[k k^T]
    cov_docs: int = Field(1000, ge=1)
    cov_ridge: float = Field(0.0, ge=0)
    max_length: int = Field(256, ge=8)
    data_dir: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _explicit_request(self) -> RomeParams:
        given = [self.subject is not None, self.prompt is not None, self.target_new is not None]
        if any(given) and not all(given):
            raise ValueError("subject, prompt and target_new must be given together (or none: a built-in fact)")
        if self.prompt is not None and "{}" not in self.prompt:
            raise ValueError(f"prompt must contain '{{}}' for the subject, got prompt={self.prompt!r}")
        if self.context_templates is not None and (
            not self.context_templates or self.context_templates[0] != "{}"
            or any("{}" not in t for t in self.context_templates)
        ):
            raise ValueError('context_templates must start with "{}" (the bare prompt) and each contain "{}"')
        return self


class TraceFact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str  # with "{}" for the subject
    subject: str
    target: str  # expected answer (its first token is compared with the prediction)


class CausalTraceParams(TaskParams):
    model: str = "tiny-gpt2"
    facts: list[TraceFact] | None = None  # default: facts_file, else data.BUILTIN_FACTS (true objects)
    facts_file: str | None = None  # ROME's known_1000.json or jsonl of {prompt with "{}", subject, target}
    fact_indices: list[int] | None = None  # which of the facts to trace (default all)
    sites: list[Literal["hidden", "mlp", "attn"]] = ["hidden", "mlp", "attn"]  # noqa: RUF012 - pydantic field
    window: int = Field(10, ge=1)  # layers restored together for mlp / attn (hidden: always 1)
    samples: int = Field(10, ge=1)
    noise_factor: float = Field(3.0, gt=0)  # nu = factor x std of subject embeddings ("s3")
    noise_scale: float | None = Field(None, gt=0)  # a fixed nu instead (the paper: 0.025 for GPT-J)
    noise_seed: int = 1
    only_correct: bool = True  # the original traces only facts whose greedy first token is the target's
    answer: Literal["predicted", "expected"] = "predicted"
    reuse_prefix: bool = True  # False: every restoration recomputes the whole prompt, as the original


class EnsembleParams(TaskParams):
    model: str = "tiny-backpack"  # the Backpack whose sense offsets are ensembled (matches the upstream runs)
    large_model: str = "tiny-gpt2-corpus"  # any causal LM sharing the Backpack's tokenizer (GPT-J in the paper)
    dataset: str = "facts"
    split: Literal["val", "test"] = "test"
    league: float = Field(1e-4, gt=0)
    offsets_path: str | None = None  # default: sense_offsets.safetensors of the single upstream run
    beta_start: float = Field(1.0, gt=0)
    beta_step: float = Field(0.1, gt=0)
    general_text: str = "builtin"
    general_docs: int = Field(100, ge=1)
    kl_docs: int = Field(100, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_hard_negative: int | None = Field(None, ge=1)
    hard_negative_split: Literal["val", "test"] | None = None
    hard_neg_tolerance: float = Field(math.log(1.5), ge=0)
    max_length: int = Field(512, ge=8)
    eval_batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    seed: int = 0


class MemitParams(TaskParams):
    model: str = "tiny-gpt2-corpus"
    dataset: str = "facts"
    split: Literal["val", "test"] = "val"
    subject_type: Literal["prefix", "true"] = "prefix"  # prefix: the whole prefix is the subject ("standard")
    # default: the first ceil(L/3) layers (backpack 0..4, pythia-410m 3..7 in the paper)
    layers: list[int] | None = None
    v_num_grad_steps: int = Field(20, ge=1)
    v_lr: float = Field(0.5, gt=0)
    v_weight_decay: float = Field(0.5, ge=0)
    kl_factor: float = Field(0.0625, ge=0)  # sweep: U(0.001, 0.1)
    clamp_norm_factor: float = Field(0.75, gt=0)  # sweep: 10^U(-1.35, 0)
    mom2_update_weight: float = Field(15000.0, gt=0)  # sweep: randint(9000, 75000)
    # the fork's behaviours (sarahlc888/memit compute_z.py; the paper's runs had them; see rome.compute_v):
    fork_anti_prompts: bool = False  # verb anti prompts end in the target's leading tokens
    fork_length_norm: bool = False  # balance / verb losses divide both NLLs by one target's length
    fork_negative_stop: float | None = None  # stereoset / verb optimisation stops below this (fork: -50)
    template_lengths: list[tuple[int, int]] = [(10, 10)]  # noqa: RUF012 - pydantic field
    context_templates: list[str] | None = None
    league: float | None = Field(None, gt=0)  # in_league = degradation_general < league
    general_text: str = "builtin"
    general_docs: int = Field(100, ge=1)
    cov_docs: int = Field(1000, ge=1)
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_hard_negative: int | None = Field(None, ge=1)
    hard_negative_split: Literal["val", "test"] | None = None
    hard_neg_tolerance: float = Field(math.log(1.5), ge=0)
    max_length: int = Field(512, ge=8)
    eval_batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _annotated_subjects(self) -> MemitParams:
        if self.subject_type == "true" and self.dataset != BUILTIN_DATASET:
            raise ValueError("subject_type 'true' needs annotated subjects: only dataset 'facts' has them")
        return self
