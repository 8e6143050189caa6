"""Balanced, short-context labelled text sets (labels +1 / -1) for the word-sensitivity experiments.

What make_bert_embeddings.py / utils_data.py do (Bombari and Mondelli 2024): walk the
source in file order (IMDB: train then test), keep a text if its WordPiece count without special tokens
is below `max_tokens` (240 in the original), accept each class until it has its quota, then shuffle and
cut into train and test. Differences, each a named option:
- The shuffle is seeded (the original's `random.shuffle` is not).
- `stratify=True` (default) balances each split exactly; `stratify=False` shuffles the balanced pool and
  cuts it, as the original (each split then only balanced in expectation).
- Odd sizes: a split of size m gets m - m // 2 positives and m // 2 negatives (the original would
  collect (train + test) // 2 of each and come up one short).
Sources: "synthetic" (built-in generator, no download), "imdb" (Hugging Face `datasets`, where a hub is
reachable), or a local .jsonl / .csv / .tsv file with a text and a label column.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCES = ("synthetic", "imdb", "a path to a .jsonl, .csv or .tsv file")
_POSITIVE = {"1", "+1", "pos", "positive", "true"}
_NEGATIVE = {"0", "-1", "neg", "negative", "false"}


@dataclass(frozen=True)
class TextSet:
    texts: list[str]
    labels: list[int]  # +1 / -1
    splits: list[str]  # "train" / "test"
    token_counts: list[int]  # tokens without special tokens

    def __len__(self) -> int:
        return len(self.texts)


def label_value(raw: object, where: str = "") -> int:
    """+1 / -1 from the usual encodings (1/0, +1/-1, pos/neg, positive/negative, true/false)."""
    key = str(raw).strip().lower()
    if key in _POSITIVE:
        return 1
    if key in _NEGATIVE:
        return -1
    raise ValueError(f"label must be one of 1/0, +1/-1, pos/neg, positive/negative; got label={raw!r}{where}")


def build_text_set(
    source: str,
    n_train: int,
    n_test: int,
    count_tokens: Callable[[list[str]], list[int]],
    *,
    max_tokens: int = 240,
    seed: int = 0,
    stratify: bool = True,
    text_field: str = "text",
    label_field: str = "label",
    chunk: int = 256,
) -> TextSet:
    """The first qualifying texts of each class in source order, shuffled (seeded) into train and test.

    `count_tokens(texts)` returns each text's token count without special tokens (the model's tokenizer);
    a text is kept when its count is < max_tokens.
    """
    quota_train = {1: n_train - n_train // 2, -1: n_train // 2}
    quota_test = {1: n_test - n_test // 2, -1: n_test // 2}
    quota = {c: quota_train[c] + quota_test[c] for c in (1, -1)}
    kept: dict[int, list[tuple[str, int]]] = {1: [], -1: []}
    seen = 0
    pairs = iter_source(source, seed, text_field, label_field)
    if source == "synthetic":  # an endless stream: give up where a finite source would have ended
        pairs = itertools.islice(pairs, max(10_000, 50 * (n_train + n_test)))
    for texts, labels in _chunks(pairs, chunk):
        seen += len(texts)
        for text, label, count in zip(texts, labels, count_tokens(texts), strict=True):
            if count < max_tokens and len(kept[label]) < quota[label]:
                kept[label].append((text, count))
        if all(len(kept[c]) >= quota[c] for c in (1, -1)):
            break
    if any(len(kept[c]) < quota[c] for c in (1, -1)):
        raise ValueError(
            f"source {source!r} has {len(kept[1])} positive and {len(kept[-1])} negative texts shorter than "
            f"max_tokens={max_tokens} among {seen} read; n_train={n_train}, n_test={n_test} need "
            f"{quota[1]} and {quota[-1]}"
        )

    rng = random.Random(seed)
    pool = {c: [(t, c, k) for t, k in kept[c]] for c in (1, -1)}
    if stratify:
        for c in (1, -1):
            rng.shuffle(pool[c])
        train = pool[1][: quota_train[1]] + pool[-1][: quota_train[-1]]
        test = pool[1][quota_train[1] :] + pool[-1][quota_train[-1] :]
        rng.shuffle(train)
        rng.shuffle(test)
        rows = [(*r, "train") for r in train] + [(*r, "test") for r in test]
    else:
        both = pool[1] + pool[-1]
        rng.shuffle(both)
        rows = [(*r, "train" if j < n_train else "test") for j, r in enumerate(both)]
    return TextSet(
        texts=[r[0] for r in rows], labels=[r[1] for r in rows], splits=[r[3] for r in rows],
        token_counts=[r[2] for r in rows],
    )


def _chunks(pairs: Iterable[tuple[str, int]], size: int) -> Iterator[tuple[list[str], list[int]]]:
    texts: list[str] = []
    labels: list[int] = []
    for text, label in pairs:
        texts.append(text)
        labels.append(label)
        if len(texts) == size:
            yield texts, labels
            texts, labels = [], []
    if texts:
        yield texts, labels


def iter_source(
    source: str, seed: int = 0, text_field: str = "text", label_field: str = "label"
) -> Iterator[tuple[str, int]]:
    """(text, +1/-1) pairs of a source, in its order."""
    if source == "synthetic":
        return synthetic_reviews(seed)
    if source == "imdb":
        return _imdb()
    path = Path(source)
    if path.suffix in (".jsonl", ".csv", ".tsv"):
        if not path.is_file():
            raise FileNotFoundError(f"source file {source} does not exist")
        return _read_file(path, text_field, label_field)
    raise ValueError(f"source must be one of {', '.join(SOURCES)}; got source={source!r}")


def _read_file(path: Path, text_field: str, label_field: str) -> Iterator[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix == ".jsonl":
            records: Iterable[dict] = (json.loads(line) for line in handle if line.strip())
        else:
            records = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        for line, record in enumerate(records, start=1):
            if text_field not in record or label_field not in record:
                raise ValueError(f"{path}: record {line} lacks field {text_field!r} or {label_field!r}: "
                                 f"has {sorted(record)}")
            yield str(record[text_field]), label_value(record[label_field], f" ({path}, record {line})")


def _imdb() -> Iterator[tuple[str, int]]:
    """IMDB (Maas et al. 2011) via Hugging Face `datasets`: train then test, file order; label 1 -> +1."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise ImportError("source='imdb' needs the Hugging Face datasets package: pip install datasets") from exc
    data = load_dataset("imdb")
    for split in ("train", "test"):
        for row in data[split]:
            yield row["text"], 1 if int(row["label"]) == 1 else -1


# Built-in synthetic sentiment reviews: one or more opinion sentences of one polarity among neutral ones.
_NOUNS = ["film", "movie", "plot", "story", "cast", "ending", "script", "soundtrack", "acting", "director"]
_ADJ = {
    1: ["good", "great", "wonderful", "brilliant", "moving", "funny", "charming", "superb", "clever", "lovely"],
    -1: ["bad", "awful", "boring", "dull", "terrible", "weak", "painful", "clumsy", "silly", "tedious"],
}
_VERB = {1: ["loved", "enjoyed", "admired", "liked"], -1: ["hated", "disliked", "regretted", "endured"]}
_ADV = ["really", "quite", "truly", "rather", "very", "so"]
_WHO = ["i", "we", "my friend", "my sister", "everyone"]
_NEUTRAL = [
    "we watched it on a {day} evening .",
    "it runs for about {num} minutes .",
    "the {noun} was shot in {place} .",
    "i saw it with {who} .",
    "there is a scene on a train .",
    "the {noun} came out in the {decade}s .",
]
_OPINION = [
    "the {noun} was {adj} .",
    "{who} thought the {noun} was {adv} {adj} .",
    "{who} {verb} this {noun} .",
    "what a {adj} {noun} .",
    "honestly the {noun} is {adv} {adj} and the {noun2} is {adj2} .",
]


def synthetic_reviews(seed: int = 0) -> Iterator[tuple[str, int]]:
    """An endless seeded stream of short synthetic reviews with labels +1 / -1 (balanced in expectation);
    lengths vary from about 4 to 60 words."""
    rng = random.Random(seed)
    while True:
        label = rng.choice((1, -1))
        parts = [_fill(rng.choice(_OPINION), rng, label) for _ in range(rng.randint(1, 4))]
        parts += [_fill(rng.choice(_NEUTRAL), rng, label) for _ in range(rng.randint(0, 3))]
        rng.shuffle(parts)
        yield " ".join(parts), label


def _fill(template: str, rng: random.Random, label: int) -> str:
    return template.format(
        noun=rng.choice(_NOUNS), noun2=rng.choice(_NOUNS), adj=rng.choice(_ADJ[label]), adj2=rng.choice(_ADJ[label]),
        verb=rng.choice(_VERB[label]), adv=rng.choice(_ADV), who=rng.choice(_WHO),
        day=rng.choice(["monday", "friday", "sunday"]), num=rng.choice([90, 100, 120, 150]),
        place=rng.choice(["rome", "ohio", "a studio", "the desert"]), decade=rng.choice([1970, 1980, 1990, 2000]),
    )
