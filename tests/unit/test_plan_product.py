"""Planning a stage as a product of validated axes gives exactly the runs of point-by-point validation."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator import plan as plan_module
from orchestrator.errors import SpecError
from orchestrator.plan import StagePlan, build_plan
from orchestrator.product import ProductRuns, independent_fields, json_of, product_runs
from orchestrator.registry import TaskDef, TaskParams, get_task
from orchestrator.runs import Run, canonical_json
from orchestrator.spec import load_spec

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    a: int
    b: str = "b"


class PlantedParams(TaskParams):
    """Fields whose validation changes values: coercion, nesting, lists, tuples, dates, defaults."""

    x: float
    n: int = Field(0, ge=0)
    flag: bool = False
    mode: Literal["one", "two"] = "one"
    layers: list[int] | None = None
    pair: tuple[int, int] = (1, 2)
    inner: Inner | None = None
    when: datetime.date = datetime.date(2024, 1, 1)
    tags: list[str] = Field(default_factory=lambda: ["t"])
    label: str | None = None


class CrossParams(TaskParams):
    lo: float = 0.0
    hi: float = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> CrossParams:
        if self.lo > self.hi:
            raise ValueError(f"lo must be <= hi, got lo={self.lo}, hi={self.hi}")
        return self


PLANTED = {"test.planted": PlantedParams, "test.cross": CrossParams}


@pytest.fixture(autouse=True)
def _planted_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    def lookup(name: str) -> TaskDef:
        if name in PLANTED:
            return TaskDef(name, fn=lambda params, ctx: {}, params=PLANTED[name], target=f"tests:{name}")
        return get_task(name)

    monkeypatch.setattr(plan_module, "get_task", lookup)


def write(tmp_path: Path, text: str) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent(text))
    return spec


def stage(tmp_path: Path, params: str, task: str = "test.planted", overrides: list[str] | None = None) -> StagePlan:
    spec = write(tmp_path, f"name: s\nstages:\n  a:\n    task: {task}\n    params: {params}\n")
    return build_plan(load_spec(spec, overrides)).stages["a"]


def described(runs: list[Run]) -> list[tuple[str, str, Run]]:
    """Each run with its id and its params' repr (key order, int against float, -0.0 against 0.0)."""
    return [(run.run_id, repr(run.params), run) for run in runs]


def assert_same_as_point_by_point(plan: StagePlan) -> None:
    runs, points = plan.runs_point_by_point({})
    product = product_runs(plan.space, plan.task.params, plan.check_point, plan.address)
    assert isinstance(product, ProductRuns)
    assert described(list(product.values())) == described(list(runs.values()))
    assert (product.points, len(product), list(product)) == (points, len(runs), list(runs))


PLANTED_SPECS = [
    # ints and floats of one value merge (x: float); -0.0 is its own run (its JSON differs)
    "{x: {grid: [1, 1.0, 2, -0.0, 0.0, 0]}, n: {range: [0, 3]}}",
    "{x: {range: [0.0, 1.0, 0.25]}, mode: {grid: [one, two]}, flag: {grid: [false, true, 0, 1]}}",
    # list-valued params, a grid of lists, nested models as mappings, tuples and dates revalidated
    "{x: 1, layers: {grid: [null, [0], [0, 1], [0, 1]]}, inner: {grid: [{a: 1}, {a: 1, b: b}, {a: 2, b: c}]}}",
    "{x: 1, pair: {grid: [[1, 2], [3, 4]]}, when: {grid: ['2024-01-01', '2025-02-03']}, tags: {grid: [[a], [t]]}}",
    # bundles: a case without a key takes its default; one setting the default explicitly is the same run
    "{c: {cases: [{x: 1, n: 2}, {x: 1}, {x: 1, n: 0}, {x: 3, label: L}]}, flag: {grid: [true, false]}}",
    "{p: {zip: {x: [1, 2, 1.0], mode: [one, two, one]}}, n: {grid: [5, 6]}}",
    "{x: 2.5}",
    # an int range longer than a validation batch, kept as a range (its values validate to themselves)
    "{x: 1, n: {range: [0, 9000]}}",
    "{x: 1, flag: {range: [0, 2]}}",  # an int range whose values validate to others (False, True)
]


@pytest.mark.parametrize("params", PLANTED_SPECS)
def test_planted_specs_plan_as_point_by_point(tmp_path: Path, params: str) -> None:
    # Invariant: same runs (ids, params with their order and types, spec order, duplicates merged alike).
    plan = stage(tmp_path, params)
    assert isinstance(plan.runs, ProductRuns)
    assert_same_as_point_by_point(plan)


@pytest.mark.parametrize("override", ["n=[1,2]", "layers=[0,1]", "layers=[[0],[1]]", "x={range: [0, 3]}"])
def test_overridden_specs_plan_as_point_by_point(tmp_path: Path, override: str) -> None:
    # Invariant: list overrides (a grid, or one list value where the field holds lists) plan alike.
    plan = stage(tmp_path, "{x: 1, n: 0, layers: null}", overrides=[override])
    assert_same_as_point_by_point(plan)


def test_every_root_grid_stage_of_the_sweeps_plans_as_point_by_point() -> None:
    # Invariant: for the shipped sweeps, ids stay those users' stored results are addressed by.
    exact = 0
    for path in sorted(SWEEPS.glob("*.yaml")):
        for plan in build_plan(load_spec(path)).stages.values():
            if plan.kind == "grid" and not plan.needs:
                if isinstance(plan.runs, ProductRuns):
                    assert_same_as_point_by_point(plan)
                    exact += 1
                else:
                    assert product_runs(plan.space, plan.task.params, plan.check_point, plan.address) is None
    assert exact >= 10  # demo, attribution and diversity tasks validate field by field


@pytest.mark.parametrize("params", [
    "{x: {grid: [1, 2]}, label: 'run-${x}'}",  # a reference
    "{x: {grid: [1, 2]}, n: {when: {x: 2}, then: 3}}",  # a condition
])
def test_dependent_points_are_validated_point_by_point(tmp_path: Path, params: str) -> None:
    # Invariant: references and conditions keep full per-point validation.
    plan = stage(tmp_path, params)
    assert isinstance(plan.runs, dict)
    assert product_runs(plan.space, plan.task.params, plan.check_point, plan.address) is None


def test_cross_field_validators_keep_point_by_point_validation(tmp_path: Path) -> None:
    # Invariant: a model validator sees the whole point, so no point skips it.
    assert not independent_fields(CrossParams) and independent_fields(PlantedParams)
    with pytest.raises(SpecError, match=r"lo must be <= hi, got lo=2\.0, hi=1\.0"):
        stage(tmp_path, "{lo: {grid: [0, 2]}, hi: 1}", task="test.cross")

    class Checked(TaskParams):
        x: float

        @field_validator("x")
        @classmethod
        def _finite(cls, value: float) -> float:
            return value

    assert not independent_fields(Checked)


INVALID_SPECS = [
    "{x: {grid: [1, 2]}, n: {grid: [0, 1, -1, -2]}}",  # a later value of the last axis
    "{x: {grid: [1, oops, 3]}, n: {grid: [0, -1]}}",  # two axes: the first failing point decides
    "{x: {grid: [1, oops]}, mode: {grid: [one, three]}, n: {range: [0, 3]}}",
    "{x: oops, n: {grid: [0, 1]}}",  # the first point
    "{c: {cases: [{x: 1}, {x: 2, nn: 3}]}}",  # an unknown parameter in a later case
    "{c: {cases: [{x: 1}, {n: 2}]}}",  # a case without a required parameter
    "{x: 1, inner: {grid: [{a: 1}, {a: x}]}}",  # inside a nested model
    "{x: 1, n: {range: [5000, -10, -1]}}",  # an int range failing in its second validation batch
]


@pytest.mark.parametrize("params", INVALID_SPECS)
def test_an_invalid_value_raises_the_point_by_point_error(tmp_path: Path, params: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Invariant: the same message (file, line, key and reason) as validating every point in order.
    spec = write(tmp_path, f"name: s\nstages:\n  a:\n    task: test.planted\n    params: {params}\n")
    with pytest.raises(SpecError) as fast:
        build_plan(load_spec(spec))
    monkeypatch.setattr(plan_module, "product_runs", lambda *args: None)
    with pytest.raises(SpecError) as point_by_point:
        build_plan(load_spec(spec))
    assert str(fast.value) == str(point_by_point.value)
    assert str(fast.value).startswith(f"{spec}:5: stages.a.params")


def test_product_runs_is_a_mapping_of_run_ids(tmp_path: Path) -> None:
    # Invariant: what readers of `StagePlan.runs` use works without holding the runs: len, ids, values, lookup.
    plan = stage(tmp_path, "{x: {grid: [1, 2]}, n: {range: [0, 3]}}")
    runs = list(plan.runs.values())
    assert len(plan.runs) == 6 and list(plan.runs) == [run.run_id for run in runs]
    assert plan.runs[runs[4].run_id] == runs[4] and runs[4].run_id in plan.runs and "nope" not in plan.runs
    assert runs[4].params["x"] == 2.0 and runs[4].params["n"] == 1
    assert_same_as_point_by_point(stage(tmp_path, "{}", task="demo.noop"))  # no axis: one run


def test_plan_counts_stored_runs_of_a_product_stage_and_a_stage_needing_it(tmp_path: Path) -> None:
    # Invariant: `plan`/`status` counts from streamed ids match the stored rows, and a stage that needs a
    # product stage still links to its runs.
    from orchestrator.status import summarize
    from orchestrator.store import ResultStore

    spec = write(tmp_path, """\
        name: s
        stages:
          a: {task: demo.vector, params: {length: {grid: [8, 64]}, scale: {grid: [0.5, 1.0, 2.0]}}}
          b: {task: demo.vector_sum, needs: [a], params: {length: {grid: [8, 64]}, scale: 1.0}}
    """)
    sweep = build_plan(load_spec(spec))
    a, b = sweep.stages["a"], sweep.stages["b"]
    assert isinstance(a.runs, ProductRuns) and isinstance(b.runs, dict)
    assert [run.upstream["a"] for run in b.runs.values()] == [
        (run.run_id,) for run in a.runs.values() if run.params["scale"] == 1.0]
    store = ResultStore(tmp_path / "results", "s")
    ids = list(a.runs)
    store.write_rows("a", [{"run_id": ids[0], "status": "ok", "attempt": 1},
                           {"run_id": ids[3], "status": "task_error", "attempt": 1},
                           {"run_id": "0123456789abcdef", "status": "ok", "attempt": 1}])
    summary, _ = summarize(sweep, store)
    assert (summary.total, summary.ok, summary.failed, summary.to_run, summary.stored_not_in_spec) == (6, 1, 1, 4, 1)


@pytest.mark.parametrize("value", [0, -7, 10**40, True, None, 0.0, -0.0, 1e-07, 1e300, 0.1 + 0.2, float("nan"),
                                   float("inf"), -float("inf"), "", "naïve \"q\" \\ \n\u2028 \U0001f600", [1, "a"],
                                   {"b": 1, "a": [0.5]}])
def test_json_of_is_canonical_json(value: object) -> None:
    # Invariant: the pieces run ids are hashed from are the JSON make_run_id hashes.
    assert json_of(value) == canonical_json(value)
