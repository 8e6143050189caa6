"""Errors users see: each names the file, line, key path and reason."""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """Base of every error the CLI turns into a clean message and a non-zero exit code."""

    exit_code = 1


class UnknownTaskError(OrchestratorError):
    exit_code = 2


class SpecError(OrchestratorError):
    """A malformed sweep spec: `file:line: key.path: reason`."""

    exit_code = 2

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        value: Any = None,
        hint: str | None = None,
    ) -> None:
        self.reason, self.file, self.line, self.key, self.value, self.hint = reason, file, line, key, value, hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.key:
            text += f"{self.key}: "
        text += self.reason
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(OrchestratorError):
    """A command-line option that cannot be honoured (an unknown executor or stage)."""

    exit_code = 2


class ResourceError(OrchestratorError):
    """A stage asks for resources no node of the cluster has (Ray would leave it pending forever)."""

    exit_code = 2


class StoreError(OrchestratorError):
    """The results directory holds something unreadable or is locked by another driver."""

    exit_code = 2


class ClusterError(OrchestratorError):
    """Ray could not be started or reached; the message carries the remedy."""

    exit_code = 2
