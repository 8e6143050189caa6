"""The labelled text-set builder (seeds.md A.2): balance, length filter, sources, seeding."""

import json

import pytest

from tasks.embedding.data import build_text_set, iter_source, label_value, synthetic_reviews


def words(texts):
    return [len(t.split()) for t in texts]


def test_balanced_splits_and_length_filter():
    ts = build_text_set("synthetic", 11, 6, words, max_tokens=20, seed=1)
    assert len(ts) == 17 and ts.splits.count("train") == 11
    train = [y for y, s in zip(ts.labels, ts.splits, strict=True) if s == "train"]
    test = [y for y, s in zip(ts.labels, ts.splits, strict=True) if s == "test"]
    assert (train.count(1), train.count(-1)) == (6, 5)  # odd size: one more positive
    assert (test.count(1), test.count(-1)) == (3, 3)
    assert all(k < 20 for k in words(ts.texts)) and ts.token_counts == words(ts.texts)


def test_unstratified_pool_is_balanced():
    ts = build_text_set("synthetic", 10, 10, words, max_tokens=40, seed=2, stratify=False)
    assert ts.labels.count(1) == ts.labels.count(-1) == 10


def test_first_qualifying_texts_of_each_class():
    # deterministic selection: the earliest texts of each class under the limit, whatever the shuffle
    ts = build_text_set("synthetic", 6, 0, words, max_tokens=15, seed=3)
    expected = {1: [], -1: []}
    for text, label in synthetic_reviews(3):
        if len(text.split()) < 15 and len(expected[label]) < 3:
            expected[label].append(text)
        if all(len(v) == 3 for v in expected.values()):
            break
    assert sorted(ts.texts) == sorted(expected[1] + expected[-1])


def test_seeded_shuffle():
    a = build_text_set("synthetic", 8, 4, words, seed=5)
    assert a == build_text_set("synthetic", 8, 4, words, seed=5)
    assert a.texts != build_text_set("synthetic", 8, 4, words, seed=6).texts


def test_local_jsonl_and_csv(tmp_path):
    rows = [{"text": f"text number {i}", "label": ["pos", "neg"][i % 2]} for i in range(10)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv = tmp_path / "d.csv"
    csv.write_text("review,y\n" + "".join(f"\"{r['text']}, ok\",{1 if r['label'] == 'pos' else 0}\n" for r in rows))
    a = build_text_set(str(jsonl), 4, 2, words, seed=0)
    b = build_text_set(str(csv), 4, 2, words, seed=0, text_field="review", label_field="y")
    assert a.labels.count(1) == 3 and b.labels.count(1) == 3
    assert all(t.endswith(", ok") for t in b.texts)


def test_source_errors(tmp_path):
    with pytest.raises(ValueError, match="source must be one of"):
        list(iter_source("nowhere"))
    with pytest.raises(FileNotFoundError):
        list(iter_source(str(tmp_path / "missing.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"label='maybe'|label=.maybe."):
        list(iter_source(str(bad)))
    with pytest.raises(ValueError, match="need 3 and 3"):
        build_text_set("synthetic", 6, 0, words, max_tokens=2)  # nothing is that short
    assert label_value("+1") == 1 and label_value(0) == -1 and label_value("Negative") == -1


def test_imdb_needs_datasets_package():
    # the real loader is kept; without the `datasets` package it says what to install
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            next(iter_source("imdb"))
    else:
        pytest.skip("datasets is installed; loading IMDB needs a hub")
