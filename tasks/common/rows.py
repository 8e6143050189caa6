"""Row helpers shared by the families' adapters."""

from __future__ import annotations

from typing import Any


def uniform_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with the same columns (union, first-seen order; None where a level has no value): one
    stable schema per task, whatever level comes first."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key) for key in columns} for row in rows]
