"""Readers of the original canonical-examples files, and the built-in facts."""

from __future__ import annotations

import pytest

from tasks.editing import data

try:
    ROOT = data.data_dir()
except FileNotFoundError:
    ROOT = None
needs_data = pytest.mark.skipif(ROOT is None, reason="canonical_examples data not present")

# (train, eval, targeted, hard negatives) record counts per dataset and split, from SOURCE.md
SIZES = {
    ("country", "val"): (119, 582, 119, 116),
    ("country", "test"): (119, 583, 119, 117),
    ("company", "val"): (86, 421, 86, 219),
    ("company", "test"): (86, 425, 86, 221),
    ("gender", "val"): (20, 320, 320, 235),
    ("gender", "test"): (20, 360, 360, 231),
    ("temporal", "val"): (75, 452, 75, 389),
    ("temporal", "test"): (76, 486, 76, 325),
    ("stereoset", "val"): (1053, 1053, 1053, 1053),
    ("stereoset", "test"): (1053, 1053, 1053, 1053),
    ("verb", "val"): (240, 360, 360, 720),
    ("verb", "test"): (240, 360, 360, 720),
}


@needs_data
@pytest.mark.parametrize(("name", "split"), sorted(SIZES))
def test_real_files_parse_with_the_documented_sizes(name, split):
    # every role of every dataset and split parses, with the record counts of SOURCE.md
    d = data.load_dataset(name, split)
    assert (len(d.train), len(d.eval), len(d.targeted), len(d.hard_negative)) == SIZES[(name, split)]
    n_suffixes = 2 if name in ("gender", "verb") else 1
    assert all(len(e.suffixes) == n_suffixes for e in d.train + d.eval)
    assert all(len(e.suffixes) == 1 for e in d.hard_negative)
    assert all(isinstance(t, str) and t for t in d.targeted)
    assert d.files["train"].endswith(f"-{split}.jsonl")


@needs_data
def test_record_contents_match_the_original_format():
    country = data.load_dataset("country", "val")
    assert country.train[0] == data.Example("The capital of Afghanistan is", (" Kabul",))
    assert country.loss_type == "good" and country.threshold == pytest.approx(1.6094379124341003)
    gender = data.load_dataset("gender", "val")
    assert gender.train[0].suffixes == (" he", " she") and gender.loss_type == "balance"
    verb = data.load_dataset("verb", "val")
    assert verb.train[0].prefix == ". The officers"
    assert verb.train[0].suffixes[0].startswith(" beat ") and verb.train[0].suffixes[1].startswith(" beats ")
    assert data.load_dataset("stereoset", "val").loss_type == "bad"
    # val and test cover disjoint behaviours (a few records put the country in the suffix:
    # "The capital of" -> " Algeria is Alger", as the original files do)
    val = {e.prefix + e.suffixes[0] for e in country.train}
    test = {e.prefix + e.suffixes[0] for e in data.load_dataset("country", "test").train}
    assert not val & test
    assert data.Example("The capital of", (" Algeria is Alger",)) in country.train


@needs_data
def test_hard_negative_split_quirk_is_opt_in():
    # default: test runs read the -test hard negatives; hard_negative_split="val" reproduces the original
    fixed = data.load_dataset("company", "test")
    quirk = data.load_dataset("company", "test", hard_negative_split="val")
    assert fixed.files["hard_negative"].endswith("-test.jsonl") and len(fixed.hard_negative) == 221
    assert quirk.files["hard_negative"].endswith("-val.jsonl") and len(quirk.hard_negative) == 219
    assert quirk.files["eval"] == fixed.files["eval"]


@needs_data
def test_general_text_val100():
    texts = data.general_texts("val100")
    assert len(texts) == 4007 and texts[0].startswith("<|endoftext|>")


def test_builtin_facts_dataset_offline():
    val, test = data.load_dataset("facts", "val"), data.load_dataset("facts", "test")
    assert len(val.train) == len(val.eval) == len(val.targeted) == len(data.BUILTIN_FACTS) // 2
    assert {e.prefix for e in val.train}.isdisjoint({e.prefix for e in test.train})
    assert {e.prefix for e in val.hard_negative} == {e.prefix for e in test.train}
    assert val.train[0] == data.Example("The Eiffel Tower is located in the city of", (" Paris",))
    assert val.eval[0].prefix.startswith("Tourists who visit The Eiffel Tower")
    for fact in data.BUILTIN_FACTS:
        assert "{}" in fact.prompt and "{}" in fact.paraphrase and fact.subject in fact.text()
    assert len(data.general_texts("builtin")) >= 20


def test_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset='nope'"):
        data.load_dataset("nope", "val", data_dir_=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_dataset("facts", "train")
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"prefix": "a"}\n')
    with pytest.raises(ValueError, match="no field 'suffix'"):
        data.read_examples(bad, pair=False)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        data.data_dir(tmp_path / "missing")


def test_known_1000_and_counterfact_readers(tmp_path):
    # ROME's file formats (JSON lists, as downloaded from the project site), read without network
    import json

    known = tmp_path / "known_1000.json"
    known.write_text(json.dumps([{"known_id": 0, "subject": "Vinson Massif", "attribute": "Antarctica",
                                  "template": "{} is located in the continent of",
                                  "prompt": "Vinson Massif is located in the continent of"}]))
    assert data.read_trace_facts(known) == [("{} is located in the continent of", "Vinson Massif", "Antarctica")]
    counterfact = tmp_path / "counterfact.json"
    counterfact.write_text(json.dumps([{
        "case_id": 0,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                              "target_new": {"str": "English"}, "target_true": {"str": "French"}},
        "paraphrase_prompts": ["Shayna does this. Danielle Darrieux spoke the language"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
    }]))
    (fact,) = data.read_counterfact(counterfact)
    assert (fact.subject, fact.target_true, fact.target_new) == ("Danielle Darrieux", "French", "English")
    assert fact.paraphrase.format(fact.subject) == "Shayna does this. Danielle Darrieux spoke the language"
    assert fact.neighborhood == ("The mother tongue of Léon Blum is",)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "x"}\n')
    with pytest.raises(ValueError, match="record 0"):
        data.read_trace_facts(bad)
