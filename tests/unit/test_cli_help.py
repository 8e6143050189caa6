"""The command line's own help: version, help text that keeps its env-var mentions, task descriptions."""

from __future__ import annotations

import re
from importlib import metadata

from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and metadata.version("interp-sweeps") in result.stdout


def test_run_help_keeps_env_vars_and_defaults() -> None:
    # The bracketed "[env ...]" text used to be eaten as Rich markup.
    text = " ".join(_plain(runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).stdout).split())
    assert "RAY_ADDRESS" in text and "ORCHESTRATOR_RESULTS" in text and "default ./results" in text


def test_completion_is_installable() -> None:
    text = _plain(runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout)
    assert "--install-completion" in text and "--show-completion" in text


def test_tasks_name_shows_parameters_constraints_and_setup() -> None:
    result = runner.invoke(app, ["tasks", "demo.quadratic"], env={"COLUMNS": "200"})
    text = _plain(result.stdout)
    assert result.exit_code == 0, text
    assert re.search(r"x\s*│\s*float\s*│\s*required", text)
    assert re.search(r"noise\s*│\s*float\s*│\s*0\.0\s*│\s*>= 0", text)
    assert "the minimum is at x = 1" in text
    setup = _plain(runner.invoke(app, ["tasks", "editing.finetune"], env={"COLUMNS": "200"}).stdout)
    assert "reused across runs that share: model" in setup
    assert re.search(r"lr\s*│\s*float\s*│\s*0\.0001\s*│\s*> 0", setup)


def test_tasks_of_an_unknown_name_is_a_usage_error() -> None:
    result = runner.invoke(app, ["tasks", "demo.quadratc"])
    assert result.exit_code == 2 and "did you mean" in result.output.lower()
