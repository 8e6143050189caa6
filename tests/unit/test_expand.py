"""Parameter grammar: order, forms, references, laziness, and stable run ids."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.expand import parse_params
from orchestrator.runs import make_run_id
from orchestrator.plan import build_plan
from orchestrator.spec import SpecSource, load_spec


def expand(params: dict) -> list[dict]:
    return list(parse_params(params, SpecSource("t.yaml"), ("params",)))


def test_grid_and_range_multiply_in_declaration_order() -> None:
    # Invariant: axes multiply; the last declared varies fastest; plain values are constant.
    runs = expand({"a": {"grid": [1, 2]}, "m": "x", "b": {"range": [0, 6, 2]}})
    assert runs == [{"a": a, "m": "x", "b": b} for a in (1, 2) for b in (0, 2, 4)]


def test_float_range_and_single_bound() -> None:
    assert expand({"r": {"range": [0.0, 0.3, 0.1]}}) == [{"r": 0.0}, {"r": 0.1}, {"r": 0.2}]
    assert expand({"r": {"range": [3]}}) == [{"r": 0}, {"r": 1}, {"r": 2}]


def test_zip_sets_parameters_together() -> None:
    runs = expand({"p": {"zip": {"s": ["a", "b"], "t": [1, 2]}}, "k": {"grid": [0, 1]}})
    assert runs == [{"s": "a", "t": 1, "k": 0}, {"s": "a", "t": 1, "k": 1},
                    {"s": "b", "t": 2, "k": 0}, {"s": "b", "t": 2, "k": 1}]


def test_cases_merge_bundles_and_lists_of_dicts_stay_values() -> None:
    runs = expand({"c": {"cases": [{"lr": 1, "steps": 5}, {"lr": 2}]}, "d": {"grid": [{"x": 1}, {"x": 2}]}})
    assert runs == [{"lr": 1, "steps": 5, "d": {"x": 1}}, {"lr": 1, "steps": 5, "d": {"x": 2}},
                    {"lr": 2, "d": {"x": 1}}, {"lr": 2, "d": {"x": 2}}]


def test_when_expands_only_where_condition_holds() -> None:
    runs = expand({"map": {"grid": ["rf", "drf"]}, "L": {"when": {"map": "drf"}, "then": {"grid": [2, 4]}, "else": 1}})
    assert runs == [{"map": "rf", "L": 1}, {"map": "drf", "L": 2}, {"map": "drf", "L": 4}]
    runs = expand({"map": {"grid": ["rf", "drf"]}, "L": {"when": {"map": ["drf"]}, "then": 3}})
    assert runs == [{"map": "rf"}, {"map": "drf", "L": 3}]


def test_references_keep_type_and_interpolate() -> None:
    runs = expand({"n": {"grid": [1, 2]}, "m": "${n}", "tag": "run-${n}-${cfg.k}", "cfg": {"k": "v"}})
    assert runs == [{"n": 1, "m": 1, "tag": "run-1-v", "cfg": {"k": "v"}},
                    {"n": 2, "m": 2, "tag": "run-2-v", "cfg": {"k": "v"}}]


def test_expansion_is_lazy() -> None:
    # Invariant: a 10^12-point space yields its first runs (materialising it would never finish).
    axes = {f"k{i}": {"range": [0, 1000]} for i in range(4)}
    space = parse_params(axes, SpecSource("t.yaml"), ("params",))
    assert space.size() == 10**12
    first = list(itertools.islice(space, 3))
    assert first[2] == {"k0": 0, "k1": 0, "k2": 0, "k3": 2}


def test_run_id_is_pinned() -> None:
    # Invariant: run ids are a stable content hash (a known value, independent of key order).
    assert make_run_id("demo.quadratic", 1, {"x": 1.0, "y": 0.0, "noise": 0.0, "seed": 0}) == "e6c2c935820453f1"
    assert make_run_id("demo.quadratic", 1, {"seed": 0, "noise": 0.0, "y": 0.0, "x": 1.0}) == "e6c2c935820453f1"
    literal = '{"params":{"noise":0.0,"seed":0,"x":1.0,"y":0.0},"task":"demo.quadratic","version":1}'
    assert hashlib.sha256(literal.encode()).hexdigest()[:16] == "e6c2c935820453f1"
    assert make_run_id("demo.quadratic", 2, {"x": 1.0, "y": 0.0, "noise": 0.0, "seed": 0}) != "e6c2c935820453f1"


def test_run_ids_are_canonical_across_spellings(tmp_path: Path) -> None:
    # Invariant: `x: 1` and `x: 1.0` (and an explicit default) are the same run.
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent("""\
        name: s
        stages:
          a: {task: demo.quadratic, params: {x: 1}}
          b: {task: demo.quadratic, params: {x: 1.0, y: 0.0}}
    """))
    plan = build_plan(load_spec(spec))
    (a,), (b,) = plan.stages["a"].runs.values(), plan.stages["b"].runs.values()
    assert a.run_id == b.run_id == "e6c2c935820453f1"


def test_run_id_same_in_another_process(tmp_path: Path) -> None:
    # Invariant: hashing does not depend on the process (no PYTHONHASHSEED, no dict order effects).
    code = "from orchestrator.runs import make_run_id; print(make_run_id('t', 3, {'b': [1, {'z': 2.5}], 'a': 'x'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parents[2])})
    assert out.stdout.strip() == make_run_id("t", 3, {"a": "x", "b": [1, {"z": 2.5}]})


def test_overrides_hydra_style(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nstages:\n  a: {task: demo.quadratic, params: {x: 1, noise: 0.5}}\n")
    loaded = load_spec(spec, ["x={grid: [3, 4]}", "stages.a.params.y=2", "name=t"])
    assert loaded.name == "t"
    runs = [r.params for r in build_plan(loaded).stages["a"].runs.values()]
    assert [(r["x"], r["y"], r["noise"]) for r in runs] == [(3.0, 2.0, 0.5), (4.0, 2.0, 0.5)]


@pytest.mark.parametrize("n", [1, 7])
def test_size_matches_enumeration(n: int) -> None:
    space = parse_params({"a": {"grid": list(range(n))}, "b": {"zip": {"c": [1, 2], "d": [3, 4]}}},
                         SpecSource("t.yaml"), ("params",))
    assert space.size() == len(list(space)) == 2 * n
