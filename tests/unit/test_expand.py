"""Parameter grammar: order, forms, references, laziness, and stable run ids."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.expand import DEFAULT_MAX_RUNS, MAX_COUNTING_STATES, check_run_limit, parse_params
from orchestrator.plan import build_plan
from orchestrator.runs import make_run_id
from orchestrator.spec import SpecSource, load_spec


def expand(params: dict) -> list[dict]:
    return list(parse_params(params, SpecSource("t.yaml"), ("params",)))


def space(params: dict):
    return parse_params(params, SpecSource("t.yaml"), ("stages", "s", "params"))


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


@pytest.mark.parametrize("override", ["y=[1,2]", "y=1,2", "y= 1, 2", "y={grid: [1, 2]}", "stages.a.params.y=[1,2]"])
def test_a_list_override_of_a_scalar_parameter_is_a_grid(tmp_path: Path, override: str) -> None:
    # Invariant: y=[1,2] and Hydra's y=1,2 sweep y, as the explicit {grid: [1,2]} does.
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nstages:\n  a: {task: demo.quadratic, params: {x: 1, y: 0}}\n")
    runs = build_plan(load_spec(spec, [override])).stages["a"].runs.values()
    assert sorted(r.params["y"] for r in runs) == [1.0, 2.0]


def test_a_list_override_of_a_list_parameter_stays_one_value(tmp_path: Path) -> None:
    # A parameter that holds lists takes the list as its value; a list of lists sweeps it.
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nstages:\n  a:\n    task: editing.finetune\n    params: {trainable_layers: null}\n")
    one = build_plan(load_spec(spec, ["trainable_layers=[0,1]"])).stages["a"].runs.values()
    assert [r.params["trainable_layers"] for r in one] == [[0, 1]]
    two = build_plan(load_spec(spec, ["trainable_layers=[[0],[1]]"])).stages["a"].runs.values()
    assert sorted(r.params["trainable_layers"][0] for r in two) == [0, 1]


@pytest.mark.parametrize("override", ["lr=0.1", "stages.t.params.lr=0.1"])
def test_an_override_that_tune_space_shadows_is_an_error(tmp_path: Path, override: str) -> None:
    # Invariant: an override with no effect is refused, naming why and what to change instead.
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nstages:\n  t:\n    task: demo.quadratic\n    params: {x: 1}\n"
                    "    tune: {metric: loss, mode: min, space: {y: {uniform: [-3, 3]}}}\n")
    with pytest.raises(SpecError) as caught:
        build_plan(load_spec(spec, [override.replace("lr", "y")]))
    message = str(caught.value)
    assert "<command line>" in message and "no effect" in message and "tune.space" in message
    assert "stages.t.tune.space.y=" in message


@pytest.mark.parametrize("n", [1, 7])
def test_size_matches_enumeration(n: int) -> None:
    space = parse_params({"a": {"grid": list(range(n))}, "b": {"zip": {"c": [1, 2], "d": [3, 4]}}},
                         SpecSource("t.yaml"), ("params",))
    assert space.size() == len(list(space)) == 2 * n


@pytest.mark.parametrize("start,stop,step", [(0.0, 0.3, 0.1), (1, 0, -0.1), (-1.5, 2.5, 0.25), (0, 1, 1 / 3)])
def test_float_range_values_are_those_of_the_list_it_replaced(start: float, stop: float, step: float) -> None:
    # Invariant: a lazy float range holds exactly the values the materialised list held, round(start + i*step, 12).
    count = max(0, int(-(-(stop - start) // step)))
    expected = [round(start + i * step, 12) for i in range(count)]
    (entry,) = space({"r": {"range": [start, stop, step]}}).entries
    assert list(entry.values) == expected and [entry.values[i] for i in range(count)] == expected
    assert [entry.values.count(v) for v in (*expected, 0.123)] == [expected.count(v) for v in (*expected, 0.123)]


def test_huge_ranges_are_counted_not_materialised() -> None:
    # Invariant: a 10^12-point range, int or float, is sized arithmetically within the issue's 1 s bound (a list of
    # it could never be built), streams its first runs, and check_run_limit refuses it naming count and limit.
    started = time.perf_counter()
    for axis in ({"range": [0, 10**12]}, {"range": [0.0, 1.0e12, 1.0]}):
        huge = space({"x": axis, "seed": {"grid": [0, 1]}})
        assert huge.size() == 2 * 10**12
        assert list(itertools.islice(huge, 3)) == [{"x": 0, "seed": 0}, {"x": 0, "seed": 1}, {"x": 1, "seed": 0}]
        with pytest.raises(SpecError) as info:
            check_run_limit(huge)
        assert str(info.value) == (
            f"t.yaml: stages.s.params: the stage expands to 2,000,000,000,000 runs, above the limit of "
            f"{DEFAULT_MAX_RUNS:,} (raise it with `max_runs:` in the spec, or the override max_runs=N)")
    assert time.perf_counter() - started < 1.0
    assert check_run_limit(space({"x": {"range": [0, 6]}}), limit=6) == 6


WHEN_SPACES = [  # spaces whose size depends on `when:` conditions
    {"map": {"grid": ["rf", "drf"]}, "L": {"when": {"map": "drf"}, "then": {"grid": [2, 4]}, "else": 1}},
    {"n": {"range": [0, 10]}, "L": {"when": {"n": [2, 3, 2.0, 11, "3"]}, "then": {"grid": [1, 2]}, "else": 0}},
    {"f": {"range": [0, 1, 0.1]}, "g": {"when": {"f": [0.3, 0.7]}, "then": {"range": [0, 3]}}},
    {"a": {"grid": [0, 1]}, "b": {"when": {"a": 1}, "then": {"grid": [5, 6]}},
     "c": {"when": {"a": 1, "b": 6}, "then": {"grid": [7, 8, 9]}, "else": {"grid": [0, 1]}}},
    {"p": {"zip": {"s": [1, 2, 3], "t": ["x", "y", "x"]}}, "u": {"when": {"t": "x"}, "then": {"range": [0, 4]}}},
    {"c": {"cases": [{"lr": 1}, {"lr": 2, "steps": 5}, {"steps": 5}]},
     "w": {"when": {"steps": 5, "lr": [2, 3]}, "then": {"grid": [0, 1, 2]}, "else": {"grid": [0, 1]}}},
    {"x": {"grid": [True, 1, 1.0, 2]}, "y": {"when": {"x": 1}, "then": {"grid": ["a", "b"]}}},
    {"a": {"grid": [0, 1, 2]},
     "b": {"when": {"a": [1, 2]}, "then": {"when": {"a": 2}, "then": {"grid": [7, 8]}, "else": 9}}},
    {"a": {"grid": [0, 1]}, "b": {"when": {"b": 1}, "then": 5, "else": {"grid": [1, 2]}}},  # on itself: never holds
]


@pytest.mark.parametrize("params", WHEN_SPACES)
def test_size_with_conditionals_matches_enumeration(params: dict) -> None:
    # Invariant: size() counts conditional spaces exactly, as enumerating them would.
    assert space(params).size() == len(expand(params))


def test_size_of_a_huge_conditional_space_is_arithmetic() -> None:
    # Invariant: a condition on a 10^9-point range is counted without enumerating (a run every 1 ns would take 1 s).
    params = {"n": {"range": [0, 10**9]}, "L": {"when": {"n": [5, 7]}, "then": {"grid": [1, 2, 3]}}}
    assert space(params).size() == 10**9 + 4


def test_run_limit_counts_by_enumeration_where_size_gives_up() -> None:
    # Invariant: past MAX_COUNTING_STATES combinations of conditions, size() is None and check_run_limit enumerates
    # at most limit + 1 runs: it refuses above the limit and counts exactly below it.
    tests = (MAX_COUNTING_STATES - 1).bit_length() + 1  # conditions on independent keys: 2^tests combinations
    params = {f"k{i}": {"grid": [0, 1]} for i in range(tests)}
    params |= {f"w{i}": {"when": {f"k{i}": 1}, "then": 0} for i in range(tests)}
    tangled = space(params)
    assert tangled.size() is None
    with pytest.raises(SpecError, match=r"stages.s.params: the stage expands to more than 100 runs, the limit"):
        check_run_limit(tangled, limit=100)
    assert check_run_limit(tangled, limit=2**tests) == 2**tests


def test_reference_chains_of_any_depth() -> None:
    # Invariant: a chain p0 -> p1 -> ... -> p5000 resolves to the end's value (depth 33 used to raise RecursionError),
    # and the same chain closed into a cycle is one SpecError naming the cycle.
    params: dict = {f"p{i}": f"${{p{i + 1}}}" for i in range(5000)} | {"p5000": {"grid": [1, 2]}, "tag": "t-${p0}"}
    runs = expand(params)
    assert [r["p0"] for r in runs] == [1, 2] and all(len(set(r.values())) == 2 for r in runs)
    assert [r["tag"] for r in runs] == ["t-1", "t-2"]
    params["p5000"] = "${p0}"
    with pytest.raises(SpecError, match=r"params.p0: reference cycle: p0 -> p1 -> p2 -> .* -> p5000 -> p0$"):
        expand(params)
