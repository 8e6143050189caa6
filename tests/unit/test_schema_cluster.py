"""The row schema, run identity and resource feasibility: pure functions, no Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest

from orchestrator import cluster
from orchestrator.errors import ResourceError
from orchestrator.execute import RunResult
from orchestrator.provenance import CodeState
from orchestrator.runs import Run, make_run_id
from orchestrator.schema import BAD_OUTPUT, COLUMN_TYPES, FAILED, OK, RESERVED_COLUMNS, from_column, result_rows
from orchestrator.spec import Resources
from orchestrator.store import _to_table


def a_run(**params: object) -> Run:
    upstream = {"up": ("b" * 16, "a" * 16)}
    ids = [i for group in upstream.values() for i in group]
    return Run("s", "st", "demo.x", "tasks.demo.task:x", 1, dict(params), make_run_id("demo.x", 1, params, ids),
               upstream)


NO_GIT = CodeState(None, None)


def a_result(rows: list[dict[str, object]], status: str = OK) -> RunResult:
    return RunResult("r", status, rows, 0.0, 0.1, "host", None, 1)


def test_root_ids_are_unchanged_by_lineage_addressing() -> None:
    # Invariant: a run without upstream runs keeps the id it had before lineage (stored results stay valid).
    assert make_run_id("demo.quadratic", 1, {"x": 1.0, "y": 0.0, "noise": 0.0, "seed": 0}) == "e6c2c935820453f1"


def test_lineage_enters_the_id_in_any_order() -> None:
    # Invariant: upstream ids are hashed as a sorted set; a different upstream or selected trial is another run.
    base = make_run_id("t", 1, {"a": 1}, ["x", "y"])
    assert base == make_run_id("t", 1, {"a": 1}, ["y", "x", "x"])
    assert base != make_run_id("t", 1, {"a": 1}, ["x"]) != make_run_id("t", 1, {"a": 1})
    assert make_run_id("t", 1, {"a": 1}, selected_from="z") != make_run_id("t", 1, {"a": 1})


def test_rows_carry_identity_lineage_and_provenance() -> None:
    # Invariant: every stored row has each reserved column; upstream ids are a sorted list of strings.
    run = a_run(x=2, nested={"k": [1]})
    rows = result_rows(run, a_result([{"m": 1.5}, {"m": 2.5}]), CodeState("abc", False), "{}")
    assert len(rows) == 2 and set(RESERVED_COLUMNS) <= set(rows[0])
    assert rows[0]["upstream_run_ids"] == ["a" * 16, "b" * 16] and rows[0]["nested"] == '{"k": [1]}'
    table = _to_table(rows)
    assert table.schema.field("upstream_run_ids").type == pa.list_(pa.string())
    assert from_column(rows[0]["nested"]) == {"k": [1]}


def test_reserved_and_clashing_columns_become_bad_output() -> None:
    # Invariant: a task may not return an orchestrator column, nor a parameter's name with another value.
    (row,) = result_rows(a_run(x=2), a_result([{"status": "mine"}]), NO_GIT, "{}")
    assert row["status"] == row["error_type"] == BAD_OUTPUT and "reserved" in row["error"]
    (row,) = result_rows(a_run(x=2), a_result([{"x": 3}]), NO_GIT, "{}")
    assert row["error_type"] == BAD_OUTPUT and "clashing with parameter x=2" in row["error"]
    same = result_rows(a_run(x=2), a_result([{"x": 2, "m": 1}]), NO_GIT, "{}")
    assert same[0]["status"] == OK


def test_typed_columns_survive_all_null_batches() -> None:
    # Invariant: a batch of failures only (nulls everywhere) still writes the schema's types.
    (row,) = result_rows(a_run(x=1), a_result([], FAILED), NO_GIT, "{}")
    table = _to_table([row])
    for name, kind in COLUMN_TYPES.items():
        assert table.schema.field(name).type == kind, name


NODES = [cluster.NodeInfo("head", {"CPU": 4.0, "memory": 8 * 2.0**30}),
         cluster.NodeInfo("gpu", {"CPU": 2.0, "GPU": 2.0, "accelerator_type:H100": 1.0, "memory": 16 * 2.0**30})]


def test_ray_options_and_requirements_are_one_mapping() -> None:
    # Invariant: what a task reserves (.options) and what feasibility checks are the same resources.
    res = Resources(num_cpus=0.5, num_gpus=0.5, memory="1GiB", accelerator_type="H100", custom={"slot": 1})
    assert cluster.ray_options(res) == {"num_cpus": 0.5, "num_gpus": 0.5, "memory": 2**30,
                                        "accelerator_type": "H100", "resources": {"slot": 1.0}}
    assert cluster.requirements(res) == {"CPU": 0.5, "GPU": 0.5, "memory": float(2**30),
                                         "accelerator_type:H100": 0.001, "slot": 1.0}


@pytest.mark.parametrize(("resources", "slots"), [
    ({"num_cpus": 1}, 6),
    ({"num_cpus": 0.5, "num_gpus": 0.5}, 4),
    ({"num_cpus": 1, "accelerator_type": "H100"}, 2),
    ({"num_cpus": 1, "memory": "6GiB"}, 3),
])
def test_capacity_counts_runs_that_fit_at_once(resources: dict[str, object], slots: int) -> None:
    # Invariant: capacity is the sum over nodes of the runs each node can hold at once.
    assert cluster.capacity(Resources.model_validate(resources), NODES) == slots


@pytest.mark.parametrize("resources", [{"num_cpus": 8}, {"num_gpus": 4}, {"memory": "1TiB"},
                                       {"accelerator_type": "A100"}, {"custom": {"slot": 1}}])
def test_infeasible_requests_are_refused_with_what_the_cluster_has(resources: dict[str, object]) -> None:
    # Invariant: a request no node can satisfy is refused before anything runs, naming the largest node.
    with pytest.raises(ResourceError, match=r"which no node can provide .*largest node"):
        cluster.check_feasible("s", Resources.model_validate(resources), NODES)


@pytest.mark.parametrize(("resources", "trivial"), [
    ({}, True), ({"num_cpus": 0.5}, True), ({"num_cpus": 1}, True), ({"num_cpus": 2}, False),
    ({"num_gpus": 0.25}, False), ({"memory": "1GiB"}, False), ({"accelerator_type": "H100"}, False),
    ({"custom": {"slot": 1}}, False),
])
def test_only_a_one_cpu_request_skips_local_resource_detection(resources: dict[str, object], trivial: bool) -> None:
    # Invariant: `plan` skips Ray's detection (and Ray's import) only for runs any local Ray can hold.
    assert cluster.fits_any_local_ray(Resources.model_validate(resources)) is trivial
