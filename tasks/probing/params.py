"""Parameter models of the probing family; cross-field checks are validators, so they fail at `plan`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.registry import TaskParams
from tasks.probing.data import DEFAULT_QUESTIONS

Variant = Literal["space_lower", "bare_lower", "space_cap", "bare_cap", "space_upper", "bare_upper"]
SaliencyMethod = Literal["gradient_x_input", "integrated_gradients", "norm", "input_x_gradient", "gradient_shap"]
Baseline = Literal["bos", "eos", "zero", "unk"]


def _variants(*names: Variant) -> list[Variant]:
    return list(names)


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

    @model_validator(mode="after")
    def _swap_needs_two_words(self) -> EmbeddingSwapParams:
        if self.mode != "noise" and not self.token_b:
            raise ValueError(f"mode {self.mode!r} needs token_b")
        return self


class SubjectNoiseParams(TaskParams):
    model: str = "tiny-gpt2-facts"
    questions: list[str] = Field(default_factory=lambda: list(DEFAULT_QUESTIONS))
    # each noised alone where it occurs in a question
    subjects: list[str] = Field(default_factory=lambda: ["cat", "dog", "mouse", "lion"])
    noise_scales: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0])  # x std(embedding matrix)
    samples: int = Field(10, ge=1)
    noise_unit: Literal["embedding_std", "absolute"] = "embedding_std"


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

    @model_validator(mode="after")
    def _one_answer_per_question(self) -> SaliencyParams:
        if self.answers is not None and len(self.answers) != len(self.questions):
            raise ValueError(f"answers has {len(self.answers)} entries for {len(self.questions)} questions")
        return self


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
    general_text: str = "builtin"  # tasks.common.general_text: builtin | val100 | a jsonl path
    general_docs: int = Field(20, ge=1)


