"""Seeding and small-data readers."""

from __future__ import annotations

import gzip
import random

import numpy as np
import pytest
import torch

from tasks.common.data import read_jsonl, read_text_lines
from tasks.common.seeding import seed_everything, torch_generator


def test_seed_everything_seeds_all_three_rngs():
    # Same seed -> same draws from random, numpy's global RNG and torch.
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draws()
    seed_everything(3)
    assert draws() == first
    seed_everything(4)
    assert draws() != first
    seed_everything(2**40)  # large seeds are accepted
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything("3")


def test_torch_generator_is_reproducible_and_independent():
    # Same seed -> same stream; drawing from a generator leaves the global RNG alone.
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a = torch.randn(4, generator=torch_generator(7))
    b = torch.randn(4, generator=torch_generator(7))
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(2), expected)


def test_read_jsonl_plain_and_gzip(tmp_path):
    # Records come back in order; blank lines are skipped; .gz is read transparently.
    text = '{"a": 1}\n\n{"a": 2, "b": "x"}\n'
    (tmp_path / "d.jsonl").write_text(text)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(text)
    for name in ("d.jsonl", "d.jsonl.gz"):
        assert list(read_jsonl(tmp_path / name)) == [{"a": 1}, {"a": 2, "b": "x"}]


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    # Bad JSON and non-object lines are reported with path:line; a missing file says so.
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_read_jsonl_zst(tmp_path, monkeypatch):
    # .zst files need zstandard: read when installed, a clear message when not.
    import sys

    path = tmp_path / "d.jsonl.zst"
    try:
        import zstandard
    except ImportError:
        path.write_bytes(b"")
    else:
        path.write_bytes(zstandard.ZstdCompressor().compress(b'{"a": 1}\n{"a": 2}\n'))
        assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}]
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ImportError, match="pip install zstandard"):
        list(read_jsonl(path))


def test_read_text_lines_strips_and_drops_blanks(tmp_path):
    # Non-empty lines, surrounding whitespace removed, order kept.
    path = tmp_path / "words.txt"
    path.write_text("  cat \n\n\tdog\n   \nthe capital of France\n")
    assert read_text_lines(path) == ["cat", "dog", "the capital of France"]
