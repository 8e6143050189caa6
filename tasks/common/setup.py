"""The one `ctx.setup` shape of every language-model task: `LMSetup` (model, tokenizer, device).

Rule for every family (tasks/README.md): a task with a setup declares `setup=load` (the family's `load`
function in its task.py, returning an `LMSetup`) and reads it with `lm_setup(ctx, params, load)`, which
falls back to calling `load` when `ctx.setup` is None (a direct call without the orchestrator).
`LMSetup.of` also accepts the older shapes tests and notebooks hand in: a `(model, tokenizer)` pair or a
`{"model": ..., "tokenizer": ...}` mapping. An `LMSetup` unpacks as `model, tokenizer = setup` and
indexes as `setup[0]` / `setup["model"]`, so code written for those shapes keeps working.

`memo` holds derived, read-only values computed from the model (templates, key statistics, samplers),
built once per setup and reused by later runs that share it; a task must never store anything there
that a run changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.context import RunContext


@dataclass(frozen=True, eq=False)
class LMSetup:
    """A loaded model (eval mode), its tokenizer, the device it sits on, and a memo of derived values."""

    model: Any
    tokenizer: Any
    device: str = "cpu"
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, value: Any) -> LMSetup:
        """`value` as an LMSetup: an LMSetup itself, a (model, tokenizer) pair or a mapping with both keys."""
        if isinstance(value, LMSetup):
            return value
        if isinstance(value, Mapping):
            model, tokenizer = value["model"], value["tokenizer"]
        elif isinstance(value, tuple | list) and len(value) == 2:
            model, tokenizer = value
        else:
            raise TypeError(f"ctx.setup must be an LMSetup or a (model, tokenizer) pair, got {type(value).__name__}")
        return cls(model, tokenizer, _device_of(model))

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """`memo[key]`, built by `build()` on first use (a read-only value derived from the model)."""
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return (self.model, self.tokenizer)[key]

    def __len__(self) -> int:
        return 2


def _device_of(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def lm_setup(ctx: RunContext, params: Any, load: Callable[[Any, RunContext], Any]) -> LMSetup:
    """This run's setup: `ctx.setup` (built by the orchestrator with `load`), else `load(params, ctx)`."""
    return LMSetup.of(ctx.setup if ctx.setup is not None else load(params, ctx))
