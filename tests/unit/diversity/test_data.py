"""Documents, prompts, prompt layouts and completion files of the diversity family."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.diversity import data

DATA = Path("/work/shared/data/mode_collapse")
needs_data = pytest.mark.skipif(not (DATA / "prompts.jsonl").is_file(), reason="the original's data is not here")


def test_builtin_documents_and_max_docs():
    docs = list(data.read_documents("builtin"))
    assert len(docs) == len(data.BUILTIN_DOCUMENTS) >= 10
    assert list(data.read_documents("builtin", max_docs=3)) == docs[:3]


def test_jsonl_and_txt_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}", "meta": i}) for i in range(5)) + "\n")
    assert list(data.read_documents(str(path), max_docs=2)) == ["doc 0", "doc 1"]
    with pytest.raises(KeyError, match="content"):
        list(data.read_documents(str(path), text_field="content"))
    txt = tmp_path / "docs.txt"
    txt.write_text("first\n\nsecond\n")
    assert list(data.read_documents(str(txt))) == ["first", "second"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(data.read_documents(str(tmp_path / "missing.jsonl")))


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command to make a .zst file")
def test_jsonl_zst_documents(tmp_path):
    # streamed through the zstandard package, or the zstd command when the package is absent
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(4)) + "\n")
    subprocess.run(["zstd", "-q", str(path), "-o", str(tmp_path / "docs.jsonl.zst")], check=True)
    assert list(data.read_documents(str(tmp_path / "docs.jsonl.zst"), max_docs=3)) == ["doc 0", "doc 1", "doc 2"]


def test_builtin_prompts_and_lengths():
    creative = data.load_prompts("creative")
    factual = data.load_prompts("factual", max_prompts=2)
    assert len(creative) == 5 and len(factual) == 2
    assert {p.max_new_tokens for p in creative} == {70} and {p.max_new_tokens for p in factual} == {25}
    with pytest.raises(ValueError, match="prompts_file"):
        data.load_prompts("seen")


def test_prompt_layouts():
    p = data.Prompt(0, "Tell me a joke.", " Of course, here", 70)
    assert data.format_prompt(p, "plm") == "Tell me a joke.  Of course, here"  # two spaces, as in the original
    assert data.format_prompt(p, "pythia_helpful") == "Human: Tell me a joke. Assistant: Of course, here"
    assert data.format_prompt(p, "Q: {prompt}\nA:{guide}") == "Q: Tell me a joke.\nA: Of course, here"
    with pytest.raises(ValueError, match="template"):
        data.format_prompt(p, "chatml")


@needs_data
def test_original_prompt_file_and_templates():
    creative = data.load_prompts("creative", str(DATA / "prompts.jsonl"))
    factual = data.load_prompts("factual", str(DATA / "prompts.jsonl"))
    seen = data.load_prompts("seen", str(DATA / "prompts.jsonl"))
    assert len(creative) == len(factual) == len(seen) == 20
    assert creative[0].prompt == "Write a long poem." and factual[0].guide == " Sure let me answer your question. The"
    assert {p.max_new_tokens for p in factual} == {25}
    shipped = json.loads((DATA / "prompt_templates.json").read_text())
    for key in ("plm", "pythia_helpful", "llama2_chat", "tulu_v2"):
        assert data.PROMPT_TEMPLATES[key] == shipped[key], key
    txt = data.load_prompts("creative", str(DATA / "creative_prompts.txt"))
    assert [p.prompt for p in txt] == [p.prompt for p in creative] and txt[0].guide == ""


def test_completion_file_round_trip(tmp_path):
    records = [
        {"model": "m", "mode": "creative", "temperature": 1.0, "prompt_index": 1, "sample_index": 1, "text": "b"},
        {"model": "m", "mode": "creative", "temperature": 1.0, "prompt_index": 1, "sample_index": 0, "text": "a"},
        {"model": "m", "mode": "factual", "temperature": 1.0, "prompt_index": 0, "sample_index": 0, "text": "x"},
        {"model": "m", "mode": "creative", "temperature": 0.5, "prompt_index": 0, "sample_index": 0, "text": "y"},
    ]
    path = tmp_path / "c.jsonl"
    data.write_completions(path, records)
    assert data.read_completions(path, "m", "creative", 1.0) == {1: ["a", "b"]}  # ordered by sample_index
    assert data.read_completions(path, mode="factual") == {0: ["x"]}
    assert data.read_completions(path, model="other") == {}
