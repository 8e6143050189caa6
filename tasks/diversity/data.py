"""Inputs of the diversity tasks: documents, prompts, prompt layouts, completion files.

Built-in sets are small and written for this project (plain English the tiny models' tokenizers know),
so the quickstart needs no download. The original experiment's prompts (20 creative, 20 factual,
20 "seen") are read from a file: `prompts_file=.../mode_collapse/prompts.jsonl`.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------
# Documents for next-token statistics (stand-in for the Pile validation split of the original).

BUILTIN_DOCUMENTS: tuple[str, ...] = (
    "The cat sat on the mat and looked out of the window. Outside, the rain fell on the garden and "
    "the birds hid in the tree.",
    "Paris is the capital of France. It is a large city on the river Seine, and many people visit it "
    "every year to see its museums and old streets.",
    "To make bread, mix flour, water, salt and yeast. Leave the dough to rise for an hour, then bake it "
    "in a hot oven until the crust is brown.",
    "The train left the station at nine in the morning. By noon it had crossed the mountains, and in "
    "the evening it reached the sea.",
    "Water boils at one hundred degrees and freezes at zero. Ice floats because it is lighter than the "
    "water around it.",
    "My sister plays the piano every day after school. On Sundays she plays for our grandmother, who "
    "sings the old songs she learned as a child.",
    "The market opens early on Saturday. Farmers sell apples, eggs, milk and fresh fish, and the "
    "children buy sweets with their pocket money.",
    "The sun rises in the east and sets in the west. At night the moon shines and the sky is full of "
    "stars.",
    "A good map shows the roads, the rivers and the hills. With a map and a compass you can find your "
    "way through a forest.",
    "The doctor told him to rest for a week, drink plenty of water and come back if the fever did not "
    "go away.",
    "In spring the trees turn green and the days grow longer. In autumn the leaves turn red and yellow "
    "and fall to the ground.",
    "The old bridge crosses the river in three long arches. It was built of stone two hundred years "
    "ago and still carries cars and buses today.",
    "People in Germany speak German and people in Spain speak Spanish. Many children learn English at "
    "school as a second language.",
    "The dog ran across the field, jumped over the fence and came back with a stick in its mouth.",
    "Please close the door when you leave the room, and turn off the lights to save energy.",
    "The library is quiet in the afternoon. Students read at the long tables and the librarian puts "
    "the returned books back on the shelves.",
)

# A narrow text: what "fine-tuned hard on a narrow text" means for the built-in fine-tuned tiny models.
NARROW_TEXT = "The cat sat on the mat. The cat is happy. "


def read_documents(source: str, text_field: str = "text", max_docs: int | None = None) -> Iterator[str]:
    """Stream document texts from `source`, in file order, at most `max_docs` of them.

    source: "builtin" (the small set above), a `.jsonl` or `.jsonl.zst` file with one JSON object per
    line (the text under `text_field`, as in the Pile), or a `.txt` file (one document per non-empty line).
    """
    if source == "builtin":
        docs: Iterator[str] = iter(BUILTIN_DOCUMENTS)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset={source!r}: no such file (give 'builtin' or a .jsonl / .jsonl.zst / .txt path)")
        if path.name.endswith(".txt"):
            docs = (line.rstrip("\n") for line in _open_text(path) if line.strip())
        else:
            docs = (_field(json.loads(line), text_field, path) for line in _open_text(path) if line.strip())
    for i, doc in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            return
        yield doc


def _field(record: dict, key: str, path: Path) -> str:
    if key not in record:
        raise KeyError(f"{path}: record has no field {key!r} (text_field={key!r}); fields: {', '.join(record)}")
    return record[key]


def _open_text(path: Path) -> Iterator[str]:
    """Lines of a text file, decompressing `.zst` with the `zstandard` package or the `zstd` command."""
    if not path.name.endswith(".zst"):
        with open(path, encoding="utf-8") as handle:
            yield from handle
        return
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield from io.TextIOWrapper(reader, encoding="utf-8")
        return
    if shutil.which("zstd") is None:
        raise ImportError(f"reading {path} needs the zstandard package (pip install zstandard) or the zstd command")
    proc = subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield from io.TextIOWrapper(proc.stdout, encoding="utf-8")
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------
# Prompts for completions.


@dataclass(frozen=True)
class Prompt:
    """One prompt: the instruction, the prefilled start of the answer (`guide`), its default length."""

    index: int
    prompt: str
    guide: str
    max_new_tokens: int


# Built-in sets in the style of the original (instruction + guide). The original's prompts: a file.
BUILTIN_PROMPTS: dict[str, tuple[tuple[str, str], ...]] = {
    "creative": (
        ("Write a short poem about the sea.", " Here is a poem:\n\nThe sea"),
        ("Tell me a story about a dog.", " Of course, here is a story:\n\nOnce there was a dog who"),
        ("Describe your favourite day.", " My favourite day is"),
        ("Invent a new game for children.", " Here is a new game. The children"),
        ("Write a song about the rain.", " Here is a song:\n\nThe rain"),
    ),
    "factual": (
        ("What is the capital of France?", " The capital of France is"),
        ("What is the capital of Japan?", " The capital of Japan is"),
        ("What language do people speak in Germany?", " In Germany, people speak"),
        ("How many days are in a week?", " There are"),
        ("What colour is the sky?", " The sky is"),
    ),
}

# Default number of new tokens per set, as in the original (creative and seen 70, factual 25).
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"creative": 70, "factual": 25, "seen": 70}

# Prompt layouts of the original (`format_prompt_*`): exact strings, spaces and newlines included.
PROMPT_TEMPLATES: dict[str, str] = {
    "plm": "{prompt} {guide}",
    "pythia_helpful": "Human: {prompt} Assistant:{guide}",
    "llama2_chat": (
        "<s>[INST] <<SYS>>\n    You are a helpful, respectful and honest assistant. Always answer without "
        "asking questions or clarifications.\n    <</SYS>>\n\n    {prompt} [/INST]{guide}"
    ),
    "tulu_v2": "<|user|> \n    {prompt} \n    <|assistant|>{guide}",
    "raw": "{prompt}{guide}",
}


def load_prompts(prompt_set: str, prompts_file: str | None = None, max_prompts: int | None = None) -> list[Prompt]:
    """The prompts of `prompt_set`, from the built-in sets or from `prompts_file`.

    prompts_file: a `.jsonl` with records {set, index, prompt, guide, max_new_tokens} (the layout of the
    original's `prompts.jsonl`; records of other sets are skipped), or a `.txt` file with one prompt per
    line (no guide, `prompt_set` only picks the default length).
    """
    default_len = DEFAULT_MAX_NEW_TOKENS.get(prompt_set, 70)
    if prompts_file is None:
        if prompt_set not in BUILTIN_PROMPTS:
            raise ValueError(
                f"prompt_set={prompt_set!r} is not built in ({', '.join(BUILTIN_PROMPTS)}); give prompts_file")
        prompts = [Prompt(i, p, g, default_len) for i, (p, g) in enumerate(BUILTIN_PROMPTS[prompt_set])]
    else:
        path = Path(prompts_file).expanduser()
        if path.suffix == ".txt":
            lines = [line.rstrip("\n") for line in _open_text(path) if line.strip()]
            prompts = [Prompt(i, line, "", default_len) for i, line in enumerate(lines)]
        else:
            prompts = []
            for line in _open_text(path):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if rec.get("set", prompt_set) != prompt_set:
                    continue
                prompts.append(
                    Prompt(
                        int(rec.get("index", len(prompts))),
                        rec["prompt"],
                        rec.get("guide", ""),
                        int(rec.get("max_new_tokens", default_len)),
                    )
                )
        if not prompts:
            raise ValueError(f"{prompts_file}: no prompts of set {prompt_set!r}")
    return prompts[:max_prompts] if max_prompts is not None else prompts


def format_prompt(prompt: Prompt, template: str) -> str:
    """The full prompt text: `template` is a key of PROMPT_TEMPLATES or a format string with {prompt}, {guide}."""
    layout = PROMPT_TEMPLATES.get(template, template)
    if "{prompt}" not in layout:
        raise ValueError(
            f"template={template!r} is neither one of {', '.join(PROMPT_TEMPLATES)} nor contains {{prompt}}")
    return layout.format(prompt=prompt.prompt, guide=prompt.guide)


# ---------------------------------------------------------------------------------------------------
# Completion files: one JSON object per completion, the layout of the shipped
# `completions_pythia-2.8b_T1.0.jsonl` (model, mode, temperature, prompt_index, sample_index, text).


def write_completions(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for rec in records:
            handle.write(json.dumps(rec, ensure_ascii=False) + "\n")


def read_completions(
    path: str | Path, model: str | None = None, mode: str | None = None, temperature: float | None = None
) -> dict[int, list[str]]:
    """prompt_index -> completions (in sample order), keeping records that match the given filters."""
    cells: dict[int, list[tuple[int, str]]] = {}
    for line in _open_text(Path(path)):
        if not line.strip():
            continue
        rec = json.loads(line)
        if model is not None and rec.get("model", model) != model:
            continue
        if mode is not None and rec.get("mode", mode) != mode:
            continue
        if temperature is not None and abs(float(rec.get("temperature", temperature)) - temperature) > 1e-9:
            continue
        cells.setdefault(int(rec["prompt_index"]), []).append((int(rec.get("sample_index", 0)), rec["text"]))
    return {k: [text for _, text in sorted(v, key=lambda t: t[0])] for k, v in sorted(cells.items())}
