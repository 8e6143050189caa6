"""The family shape: no family imports another family's modules; shared code lives in tasks/common/."""

from __future__ import annotations

import ast
from pathlib import Path

TASKS = Path(__file__).resolve().parents[2] / "tasks"
SHARED = {"common"}  # what every family may import


def _family(path: Path) -> str:
    return path.relative_to(TASKS).parts[0]


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "tasks"]
    return found


def test_no_family_imports_another_family() -> None:
    # Invariant: a file under tasks/<family>/ imports tasks.<family>, tasks.common or nothing of tasks/;
    # tasks/common imports no family.
    offences = []
    for path in sorted(TASKS.rglob("*.py")):
        if len(path.relative_to(TASKS).parts) < 2:
            continue  # tasks/__init__.py
        own = _family(path)
        for line, module in _imported(ast.parse(path.read_text(), filename=str(path))):
            parts = module.split(".")
            if parts[0] != "tasks" or len(parts) < 2:
                continue
            if parts[1] != own and parts[1] not in SHARED:
                offences.append(f"{path.relative_to(TASKS.parent)}:{line} imports {module}")
    assert not offences, "\n".join(offences)


def test_every_family_has_the_shape() -> None:
    # Invariant: every family with tasks has __init__.py, params.py (unless it has no params models of its
    # own) and task.py; no file under tasks/ is longer than 400 lines.
    for family in sorted(p for p in TASKS.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if family.name in SHARED:
            continue
        assert (family / "task.py").exists(), family.name
        assert (family / "params.py").exists(), family.name
    long = [f"{p.relative_to(TASKS.parent)}: {n} lines" for p in sorted(TASKS.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "\n".join(long)


def test_readme_example_runs() -> None:
    # Invariant: the example of tasks/README.md imports what it uses, defines a working task, and its
    # cross-field check fails when the params are validated (at plan), before any model loads.
    import re

    import pytest
    from pydantic import ValidationError

    from orchestrator.context import local_context

    text = (TASKS / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "tasks/README.md", "exec"), namespace)
    definition = namespace["name"].__task__
    params = definition.params.model_validate(definition.smoke)
    rows = definition.fn(params, local_context(seed=0))  # ctx.setup None: the task loads its model itself
    assert len(rows) == 1 and rows[0]["answer_nll"] > 0 and rows[0]["answer_tokens"] >= 1
    with pytest.raises(ValidationError, match="answers has 2 entries for 1 prompts"):
        definition.params(answers=[" Paris", " Rome"])
