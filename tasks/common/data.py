"""Reading small local datasets: JSON lines and plain text, optionally gzip- or zstd-compressed.

Compression is chosen by suffix: `.gz` (standard library) or `.zst` (needs the `zstandard` package).
Errors name the file and the line.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["read_jsonl", "read_text_lines"]


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line of a JSON-lines file (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`)."""
    path = Path(path)
    with _open_text(path) as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield record


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a text file, stripped of surrounding whitespace (`.gz`, `.zst` too)."""
    path = Path(path)
    with _open_text(path) as lines:
        return [line.strip() for line in lines if line.strip()]


def _open_text(path: Path) -> IO[str]:
    """Open `path` for reading UTF-8 text, decompressing `.gz` and `.zst` files on the fly."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError as exc:
            raise ImportError(f"reading {path} needs the zstandard package: pip install zstandard") from exc
        raw = open(path, "rb")  # noqa: SIM115  (closed with the wrapper)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.TextIOWrapper(reader, encoding="utf-8")
    return open(path, encoding="utf-8")
