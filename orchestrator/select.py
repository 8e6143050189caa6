"""Choosing the best config per group: metric, mode, constraints, deterministic tie-breaks."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.runs import canonical_json

OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, e.g. `degradation_general <= 0.001`."""

    metric: str
    op: str
    bound: float

    def holds(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.metric)
        return value is not None and math.isfinite(value) and OPERATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_constraint(text: str) -> Constraint:
    match = CONSTRAINT.match(text)
    if not match:
        raise ValueError(f"constraint '{text}' is not of the form `metric <op> number` "
                         f"with op in {', '.join(OPERATORS)}")
    try:
        bound = float(match.group(3))
    except ValueError:
        raise ValueError(f"constraint '{text}': '{match.group(3)}' is not a number") from None
    return Constraint(match.group(1), match.group(2), bound)


@dataclass(frozen=True)
class Trial:
    """A finished run of a tune stage: its parameters and its metrics (means over its rows)."""

    run_id: str
    params: dict[str, Any]
    metrics: dict[str, float]


def select_best(trials: list[Trial], metric: str, mode: str, constraints: list[Constraint]) -> tuple[Trial | None, int]:
    """The best trial satisfying every constraint, and how many did.

    Ties (equal metric) are broken by the canonical JSON of the parameters, so the choice never depends
    on the order trials finished in.
    """
    feasible = [
        t for t in trials
        if math.isfinite(t.metrics.get(metric, math.nan)) and all(c.holds(t.metrics) for c in constraints)
    ]
    if not feasible:
        return None, 0
    sign = 1.0 if mode == "min" else -1.0
    best = min(feasible, key=lambda t: (sign * t.metrics[metric], canonical_json(t.params)))
    return best, len(feasible)
