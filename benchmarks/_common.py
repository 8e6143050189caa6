"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_spec(text: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench-")) / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@contextmanager
def timed(label: str, sink: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    sink[label] = time.perf_counter() - start
    print(f"  {label}: {sink[label]:.2f} s", flush=True)
