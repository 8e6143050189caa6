"""The malformed-spec corpus: each bad spec is refused with file, line, key path and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec

GOOD_STAGE = """\
name: s
stages:
  a:
    task: demo.quadratic
    params:
      x: {grid: [1, 2]}
"""

# Nine anchors, each a list of nine aliases of the previous one: 9^9 leaves once expanded.
ALIAS_BOMB = "name: s\nstages: {a: {task: demo.noop}}\na0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
ALIAS_BOMB_FLOW = "[&b0 [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"&b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, 9)) + "]"
# Each anchor nests the previous one 60 levels deeper: only the aliases make it deeper than 100 levels.
ALIAS_DEEP = "name: s\nstages: {a: {task: demo.noop}}\na0: &a0 " + "[" * 60 + "1" + "]" * 60 + "\n" + "".join(
    f"a{i}: &a{i} " + "[" * 60 + f"*a{i - 1}" + "]" * 60 + "\n" for i in range(1, 3))
# p0 refers to p1, which refers to p2, ... up to p60.
CHAIN_60 = "name: s\nstages:\n  a:\n    task: demo.noop\n    params:\n" + "".join(
    f"      p{i}: '${{p{i + 1}}}'\n" for i in range(60)) + "      p60: 7\n"

# (id, spec text, overrides, substrings the message must contain)
CASES: list[tuple[str, str, list[str], list[str]]] = [
    ("bad_yaml", "name: s\nstages: [a, b\n", [], ["invalid YAML", "bad_yaml.yaml:"]),
    ("tab_indent", "name: s\nstages:\n\ta: 1\n", [], ["invalid YAML", ":3"]),
    ("duplicate_key", "name: s\nname: t\nstages: {}\n", [], ["duplicate key 'name'", ":2", "first at line 1"]),
    ("duplicate_nested", GOOD_STAGE + "      x: 3\n", [], ["duplicate key 'x'", ":7", "stages.a.params.x"]),
    ("empty", "", [], ["the spec is empty"]),
    ("not_mapping", "- a\n- b\n", [], ["must be a mapping", ":1"]),
    ("missing_name", "stages:\n  a: {task: demo.noop}\n", [], ["missing required key 'name'"]),
    ("bad_name", "name: my sweep\nstages:\n  a: {task: demo.noop}\n", [], [":1", "name", "should match pattern"]),
    ("no_stages", "name: s\nstages: {}\n", [], [":2", "stages", "at least 1"]),
    ("unknown_top_key", "name: s\nstagez: {}\nstages:\n  a: {task: demo.noop}\n", [], [":2", "unknown key 'stagez'"]),
    ("unknown_top_key_stages_missing", "name: s\nstagez:\n  a: {task: demo.noop}\n", [],
     [":2", "stagez: unknown key 'stagez'", "did you mean 'stages'?"]),
    ("unknown_stage_key", "name: s\nstages:\n  a:\n    task: demo.noop\n    parms: {i: 1}\n", [],
     [":5", "stages.a.parms", "unknown key 'parms'", "did you mean 'params'?"]),
    ("unknown_resource_key_close", GOOD_STAGE.replace("    params:", "    resources: {num_cpu: 1}\n    params:"), [],
     ["stages.a.resources.num_cpu", "unknown key 'num_cpu'", "did you mean 'num_cpus'?"]),
    ("bad_stage_name", "name: s\nstages:\n  'a b': {task: demo.noop}\n", [], ["stage name 'a b'"]),
    ("unknown_task", "name: s\nstages:\n  a:\n    task: demo.quadratc\n", [],
     [":4", "stages.a.task", "unknown task 'demo.quadratc'", "Did you mean: demo.quadratic"]),
    ("bad_task_target", "name: s\nstages:\n  a:\n    task: 'os:system'\n", [], [":4", "not a registered task"]),
    ("unknown_param", GOOD_STAGE + "      z: 1\n", [],
     [":7", "stages.a.params.z", "unknown parameter 'z'", "known: noise, seed, x, y"]),
    ("unknown_param_close", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params: {x: 1, nosie: 0.1}\n", [],
     ["unknown parameter 'nosie'", "did you mean 'noise'?"]),
    ("missing_param", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params: {y: 1}\n", [],
     ["missing required parameter 'x'", "stages.a.params"]),
    ("wrong_type", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: abc\n", [],
     [":6", "stages.a.params.x", "valid number", "'abc'"]),
    ("wrong_type_in_grid", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n"
     "      x: {grid: [1, two]}\n", [], [":6", "stages.a.params.x", "'two'"]),
    ("constraint_violation", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params: {x: 1, noise: -1}\n", [],
     ["noise", "greater than or equal to 0"]),
    ("empty_grid", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {grid: []}\n", [],
     [":6", "stages.a.params.x.grid", "grid is empty"]),
    ("grid_not_list", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {grid: 3}\n", [],
     ["grid takes a list"]),
    ("zip_unequal", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n"
     "      p: {zip: {x: [1, 2], y: [1]}}\n", [], [":6", "stages.a.params.p.zip", "unequal lengths (x=2, y=1)"]),
    ("zip_not_list", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      p: {zip: {x: 1}}\n", [],
     ["zip column must be a non-empty list"]),
    ("range_empty", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {range: [5, 1]}\n", [],
     [":6", "range [5, 1, 1] is empty"]),
    ("range_non_numeric", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {range: [a, 3]}\n",
     [], ["range start must be a number"]),
    ("range_step_zero", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {range: [0, 3, 0]}\n",
     [], ["range step must not be 0"]),
    ("negative_cpus", GOOD_STAGE.replace("    params:", "    resources: {num_cpus: -1}\n    params:"), [],
     [":5", "stages.a.resources.num_cpus", "greater than or equal to 0", "-1"]),
    ("non_numeric_gpus", GOOD_STAGE.replace("    params:", "    resources: {num_gpus: lots}\n    params:"), [],
     ["stages.a.resources.num_gpus", "valid number", "'lots'"]),
    ("fractional_gpus_above_one", GOOD_STAGE.replace("    params:", "    resources: {num_gpus: 1.5}\n    params:"), [],
     ["num_gpus above 1 must be a whole number"]),
    ("bad_memory", GOOD_STAGE.replace("    params:", "    resources: {memory: plenty}\n    params:"), [],
     ["stages.a.resources.memory", "'plenty'"]),
    ("negative_custom", GOOD_STAGE.replace("    params:", "    resources: {custom: {slot: -2}}\n    params:"), [],
     ["custom resource 'slot' must be >= 0"]),
    ("unknown_resource", GOOD_STAGE.replace("    params:", "    resources: {gpus: 1}\n    params:"), [],
     ["stages.a.resources.gpus", "unknown key 'gpus'"]),
    ("negative_retries", GOOD_STAGE.replace("    params:", "    retries: {system: -1}\n    params:"), [],
     ["stages.a.retries.system", "greater than or equal to 0"]),
    ("missing_reference", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: 1\n"
     "      y: '${z}'\n", [], [":7", "stages.a.params.y", "reference '${z}' names no parameter"]),
    ("reference_cycle", "name: s\nstages:\n  a:\n    task: demo.flaky\n    params:\n"
     "      i: '${fail_if_divisible_by}'\n      fail_if_divisible_by: '${i}'\n", [], ["reference cycle"]),
    ("needs_unknown", GOOD_STAGE.replace("    params:", "    needs: [embedd]\n    params:"), [],
     [":5", "stages.a.needs[0]", "unknown stage 'embedd'"]),
    ("needs_cycle", "name: s\nstages:\n  a: {task: demo.noop, needs: [b]}\n  b: {task: demo.noop, needs: [a]}\n", [],
     ["cycle in stage dependencies: a -> b -> a"]),
    ("needs_self", "name: s\nstages:\n  a: {task: demo.noop, needs: [a]}\n", [], ["a stage cannot need itself"]),
    ("needs_no_match", "name: s\nstages:\n  v:\n    task: demo.vector\n    params: {length: 3}\n  w:\n"
     "    task: demo.vector_sum\n    needs: [v]\n    params: {length: 4}\n", [],
     [":8", "stages.w.needs", "matches no run of stage 'v'", "length"]),
    ("when_later_key", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n"
     "      y: {when: {x: 1}, then: 2}\n      x: 1\n", [],
     [":6", "condition refers to 'x'", "not declared before 'y'"]),
    ("when_without_then", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: 1\n"
     "      y: {when: {x: 1}, else: 2}\n", [], ["when needs a `then:` value"]),
    ("form_typo", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {gird: [1, 2]}\n", [],
     [":6", "unknown form 'gird'", "did you mean 'grid'?"]),
    ("cases_not_dicts", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      c: {cases: [1, 2]}\n", [],
     ["each case must be a non-empty mapping"]),
    ("param_set_twice", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: 1\n"
     "      p: {zip: {x: [1], y: [2]}}\n", [], [":7", "parameter 'x' is set twice"]),
    ("no_task_no_transfer", "name: s\nstages:\n  a: {params: {x: 1}}\n", [], ["either `task` or `transfer`"]),
    ("transfer_without_tune", "name: s\nstages:\n  a: {task: demo.noop}\n  b: {transfer: a}\n", [],
     ["stages.b.transfer", "has no `tune:` block"]),
    ("tune_bad_mode", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params: {x: 1}\n    tune:\n"
     "      metric: loss\n      mode: maximize\n      space: {y: {uniform: [0, 1]}}\n", [],
     [":8", "stages.a.tune.mode", "'min' or 'max'"]),
    ("tune_unknown_space_param", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params: {x: 1}\n    tune:\n"
     "      metric: loss\n      mode: min\n      space: {lr: {uniform: [0, 1]}}\n", [],
     [":9", "stages.a.tune.space.lr", "'lr' is not a parameter of task demo.quadratic"]),
    ("override_syntax", GOOD_STAGE, ["x"], ["<command line>", "not of the form key.path=value"]),
    ("override_unknown", GOOD_STAGE, ["lr=0.1"], ["<command line>", "matches no spec key", "'lr'"]),
    ("override_bad_value", GOOD_STAGE, ["x=abc"], ["<command line>", "stages.a.params.x", "valid number"]),
    ("override_new_stage", GOOD_STAGE, ["stages.nope.params.x=1"],
     ["<command line>: stages.nope: a stage needs either `task` or `transfer`"]),
    ("override_inside_value", GOOD_STAGE, ["x={grid: []}"], ["<command line>: stages.a.params.x.grid: grid is empty"]),
    ("override_alias_bomb", GOOD_STAGE, [f"x={ALIAS_BOMB_FLOW}"], ["<command line>", "more than 1,000,000 YAML nodes"]),
    # Hostile documents: refused while composing, never expanded.
    ("alias_bomb", ALIAS_BOMB, [], [":9", "invalid YAML: more than 1,000,000 YAML nodes"]),
    ("recursive_alias", "name: s\nstages: &s\n  a: {task: demo.noop, params: {i: *s}}\n", [],
     [":3", "invalid YAML: alias *s is inside the node it refers to"]),
    ("deep_nesting", "name: s\nx: " + "[" * 5000 + "]" * 5000 + "\n", [],
     [":2", "invalid YAML: nesting deeper than 100 levels"]),
    ("deep_nesting_through_aliases", ALIAS_DEEP, [], [":3", "invalid YAML: nesting deeper than 100 levels"]),
    ("too_large", "name: s\nx: [" + "0, " * 100_000 + "0]\n", [], ["the spec is larger than 262,144 bytes"]),
    ("range_infinite", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n      x: {range: [0, .inf]}\n",
     [], [":6", "stages.a.params.x.range", "range stop must be finite, got inf"]),
    ("range_nan_step", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n"
     "      x: {range: [0, 1, .nan]}\n", [], ["range step must be finite, got nan"]),
    ("range_beyond_index", "name: s\nstages:\n  a:\n    task: demo.quadratic\n    params:\n"
     "      x: {range: [0, 1.0e+300, 1.0e-300]}\n", [], ["has more than 9,223,372,036,854,775,807 values"]),
    ("reference_cycle_60", CHAIN_60.replace("p60: 7", "p60: '${p0}'"), [],
     ["stages.a.params.p0: reference cycle: p0 -> p1 -> ", " -> p60 -> p0"]),
    ("reference_chain_60_unset", CHAIN_60.replace("p60: 7", "p60: {when: {p0: 1}, then: 7}"), [],
     ["stages.a.params: reference '${p60}' is not set in this run"]),
]


@pytest.mark.parametrize("case_id,text,overrides,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec_is_refused_with_location(tmp_path: Path, case_id: str, text: str, overrides: list[str],
                                                  expected: list[str]) -> None:
    # Invariant: every malformed spec raises SpecError whose message names where and why.
    path = tmp_path / f"{case_id}.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        build_plan(load_spec(path, overrides))
    message = str(info.value)
    assert message.startswith("<command line>" if overrides else str(path)), message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not (tmp_path / "results").exists()


def test_corpus_is_large_enough() -> None:
    # Invariant: the corpus covers at least 30 distinct malformed specs.
    assert len({c[0] for c in CASES}) >= 30


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec("/nonexistent/spec.yaml")


def test_good_spec_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(textwrap.dedent(GOOD_STAGE))
    assert build_plan(load_spec(path)).counts() == {"a": 2}
