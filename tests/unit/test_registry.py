"""The registry: names vs import targets, entry points, refusals (no Ray, no models)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import registry
from orchestrator.errors import UnknownTaskError


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path where a test lays out a real distribution (dist-info) with entry points."""
    sys.path.insert(0, str(tmp_path))
    registry.task_entries.cache_clear()
    registry.get_task.cache_clear()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("unitlab")]:
            del sys.modules[name]
        registry.task_entries.cache_clear()
        registry.get_task.cache_clear()
        registry.resolve_target.cache_clear()


def distribution(root: Path, name: str, entry_points: dict[str, str]) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}\n")


MODULE = textwrap.dedent('''\
    from orchestrator.registry import TaskParams, task

    class P(TaskParams):
        x: int = 0

    @task("unit.lab", params=P)
    def lab(params, ctx):
        return {"y": params.x}
''')


def test_builtin_task_carries_its_import_target() -> None:
    # Invariant: a task knows the "module:function" workers import, whatever its registered name.
    definition = registry.get_task("demo.quadratic")
    assert definition.target == "tasks.demo.task:quadratic"
    assert registry.resolve_target(definition.target) is definition


def test_module_target_with_a_different_registered_name(installed: Path) -> None:
    # Invariant: `module:function` resolves to the decorated task, whose name is the @task name.
    (installed / "unitlab.py").write_text(MODULE)
    definition = registry.get_task("unitlab:lab")
    assert (definition.name, definition.target) == ("unit.lab", "unitlab:lab")


def test_entry_point_registers_a_task(installed: Path) -> None:
    # Invariant: an installed distribution's `interp_sweeps.tasks` entry point is a registered name.
    (installed / "unitlab.py").write_text(MODULE)
    distribution(installed, "unitlab_dist", {"unit.lab": "unitlab:lab"})
    entry = registry.task_entries()["unit.lab"]
    assert entry.target == "unitlab:lab" and "unitlab_dist" in entry.origin
    assert registry.get_task("unit.lab").target == "unitlab:lab"


def test_duplicate_name_across_packages_is_refused(installed: Path) -> None:
    # Invariant: a name registered by a built-in family and by a package is an error naming both.
    distribution(installed, "clash_dist", {"demo.noop": "unitlab:lab"})
    with pytest.raises(UnknownTaskError, match=r"'demo.noop' is registered twice: by tasks.demo .* clash_dist"):
        registry.task_entries()


def test_map_key_must_match_the_task_name(installed: Path) -> None:
    # Invariant: a name that maps to a function decorated with another name is refused on lookup.
    (installed / "unitlab.py").write_text(MODULE)
    distribution(installed, "wrong_dist", {"unit.other": "unitlab:lab"})
    with pytest.raises(UnknownTaskError, match=r"registers 'unit.other' .* decorated @task\('unit.lab'\)"):
        registry.get_task("unit.other")


def test_unknown_names_get_suggestions() -> None:
    # Invariant: a misspelt name lists the close matches.
    with pytest.raises(UnknownTaskError, match=r"Did you mean: demo\.quadratic"):
        registry.get_task("demo.quadratc")


def test_undecorated_target_is_refused(installed: Path) -> None:
    # Invariant: `module:function` must name a function decorated with @task.
    (installed / "unitlab.py").write_text("def plain(params, ctx):\n    return {}\n")
    with pytest.raises(UnknownTaskError, match="not a registered task"):
        registry.get_task("unitlab:plain")


def families(root: Path, package: str, maps: dict[str, str]) -> None:
    """A package `package` under `root` with one subpackage per family, its `__init__.py` text from `maps`."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    for family, text in maps.items():
        (root / package / family).mkdir()
        (root / package / family / "__init__.py").write_text(textwrap.dedent(text))


def test_duplicate_name_across_families_is_refused(installed: Path) -> None:
    # Invariant: two built-in families declaring the same task name is an error naming both families.
    families(installed, "unitlab_fams", {"one": 'TASKS = {"x.same": "unitlab:lab"}\n',
                                         "two": 'TASKS = {"x.same": "unitlab:other"}\n'})
    clash = r"'x.same' is registered twice: by unitlab_fams.one .* unitlab_fams.two"
    with pytest.raises(UnknownTaskError, match=clash):
        registry.family_maps("unitlab_fams")


def test_duplicate_model_and_report_for_unknown_task_are_refused(installed: Path) -> None:
    # Invariant: a built-in model name declared by two families, or a report for a task no family
    # registers, is refused when the families are read.
    families(installed, "unitlab_models", {"one": 'MODELS = {"tiny-x": "unitlab:a"}\n',
                                           "two": 'MODELS = {"tiny-x": "unitlab:b"}\n'})
    with pytest.raises(UnknownTaskError, match=r"built-in model name 'tiny-x' is registered twice"):
        registry.family_maps("unitlab_models")
    families(installed, "unitlab_reports", {"one": 'TASKS = {}\nREPORTS = {"x.none": "unitlab:r"}\n'})
    with pytest.raises(UnknownTaskError, match=r"declares a report for 'x.none', which no family registers"):
        registry.family_maps("unitlab_reports")


def test_family_map_key_must_match_the_task_name(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Invariant: a family's TASKS key that differs from the @task name is refused on lookup.
    (installed / "unitlab.py").write_text(MODULE)
    families(installed, "unitlab_keys", {"fam": 'TASKS = {"unit.renamed": "unitlab:lab"}\n'})
    monkeypatch.setattr(registry, "TASK_PACKAGE", "unitlab_keys")
    with pytest.raises(UnknownTaskError, match=r"unitlab_keys.fam registers 'unit.renamed' .* @task\('unit.lab'\)"):
        registry.get_task("unit.renamed")


def test_every_builtin_name_resolves_to_its_own_task() -> None:
    # Invariant: every built-in TASKS key equals its function's @task name; every report hook and
    # built-in model builder imports.
    for name in registry.task_map():
        assert registry.get_task(name).name == name
    for target in [*registry.report_map().values(), *registry.model_map().values()]:
        assert callable(registry.import_target(target))


def test_a_setup_that_reads_upstream_is_keyed_on_the_upstream_runs(tmp_path: Path) -> None:
    # two runs with equal params but another upstream model must never share a loaded setup
    from orchestrator.context import Upstream, local_context
    from orchestrator.execute import SetupCache

    loads: list[Path] = []

    def load(params, ctx):
        loads.append(ctx.upstream_one("train").artifact_dir)
        return loads[-1]

    class Params(registry.TaskParams):
        model: str = "upstream:train"

    @registry.task("unit.reads_upstream", params=Params, setup=load, setup_keys=("model",), setup_upstream=True)
    def reads(params, ctx):
        return {"model_dir": str(ctx.setup)}

    definition = reads.__task__  # type: ignore[attr-defined]
    assert definition.setup_key({"model": "m"}) == (("model", "m"),)
    assert definition.setup_key({"model": "m"}, {"train": ["b", "a"]}) == (
        ("model", "m"), ("upstream", (("train", ("a", "b")),)))
    cache = SetupCache()

    def ctx_of(run_id: str):
        return local_context(upstream={"train": [Upstream("train", run_id, {}, tmp_path / run_id)]})

    assert cache.get(definition, Params(), ctx_of("a")) == tmp_path / "a"
    assert cache.get(definition, Params(), ctx_of("b")) == tmp_path / "b"
    assert cache.get(definition, Params(), ctx_of("a")) == tmp_path / "a"
    assert loads == [tmp_path / "a", tmp_path / "b"]
    without = registry.TaskDef("plain", reads, Params, "x:y", setup=load, setup_keys=("model",))
    assert without.setup_key({"model": "m"}, {"train": ["a"]}) == (("model", "m"),)
