"""Tiny model builders: deterministic, reloadable, with tokenizers that know the probing vocabulary."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from tasks.common import tiny
from tasks.common.corpus import CAPITALS


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_build_is_deterministic(tmp_path, tiny_dirs, arch):
    # Same seed and corpus -> byte-identical tokenizer and identical weights; another seed -> other weights.
    again = tiny.build_tiny_causal_lm(tmp_path / "again", arch=arch, seed=0)
    _assert_same_weights(_weights(tiny_dirs[arch]), _weights(again))
    assert (again / "tokenizer.json").read_bytes() == (tiny_dirs[arch] / "tokenizer.json").read_bytes()
    other = _weights(tiny.build_tiny_causal_lm(tmp_path / "other", arch=arch, seed=1))
    assert any(not torch.equal(other[k], v) for k, v in _weights(again).items())


def test_encoder_build_is_deterministic(tmp_path, tiny_dirs):
    # Same seed -> identical BERT weights and tokenizer; another seed -> other weights.
    again = tiny.build_tiny_encoder(tmp_path / "again", seed=0)
    _assert_same_weights(_weights(tiny_dirs["bert"]), _weights(again))
    assert (again / "tokenizer.json").read_bytes() == (tiny_dirs["bert"] / "tokenizer.json").read_bytes()
    other = _weights(tiny.build_tiny_encoder(tmp_path / "other", seed=1))
    assert any(not torch.equal(other[k], v) for k, v in _weights(again).items())


def test_build_leaves_global_rng_alone(tmp_path):
    # Building seeds its own RNG scope: the caller's torch random stream is unchanged.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_causal_lm(tmp_path / "m", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_reload_gives_identical_logits(tmp_path, tiny_dirs, arch):
    # save_pretrained -> from_pretrained round trip preserves the logits exactly.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[arch])
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    model.save_pretrained(tmp_path / "copy")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "copy").eval()
    with torch.no_grad():
        logits, logits_again = model(ids).logits, reloaded(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, logits_again)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_tokenizer_round_trips_and_knows_words(tiny_dirs, arch):
    # Byte-level BPE: decode(encode(text)) == text; probing words are single tokens; specials are set.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[arch])
    for text in ["The capital of France is Paris.", "My dog sat on the mat, 42 times!", "naïve café ☃"]:
        assert tokenizer.decode(tokenizer(text).input_ids) == text
    for word in [" cat", " dog", " the", " is", " France", " Paris", *(f" {c}" for c in CAPITALS.values())]:
        assert len(tokenizer(word).input_ids) == 1, word
    assert tokenizer.eos_token == tokenizer.bos_token == tiny.EOS_TOKEN
    assert tokenizer.pad_token == tiny.PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == 512


def test_encoder_tokenizer_template_and_round_trip(tiny_dirs):
    # WordPiece: [CLS] ... [SEP] around a sentence, lower-cased round trip, all BERT specials present.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["bert"])
    ids = tokenizer("The cat sat on the mat").input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat sat on the mat"
    assert tokenizer.tokenize("paris dog") == ["paris", "dog"]
    assert tokenizer.unk_token_id not in tokenizer("A quokka, 7 zebras!").input_ids  # unseen words split
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert token in tokenizer.get_vocab()
    assert tokenizer.pad_token == "[PAD]" and tokenizer.mask_token == "[MASK]"


def test_custom_corpus_and_config_overrides(tmp_path):
    # A caller's corpus trains the tokenizer; config overrides reach the model config.
    from transformers import AutoConfig, AutoTokenizer

    path = tiny.build_tiny_causal_lm(
        tmp_path / "m", arch="llama", corpus=["zebra quokka zebra quokka"] * 50, vocab_size=300, num_hidden_layers=3
    )
    assert AutoConfig.from_pretrained(path).num_hidden_layers == 3
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer(" quokka").input_ids) == 1
    assert len(tokenizer) <= 300


def test_builder_errors_are_clear(tmp_path):
    # Bad arguments name the argument and the accepted values.
    with pytest.raises(ValueError, match="arch must be one of gpt2, llama, got arch='bert'"):
        tiny.build_tiny_causal_lm(tmp_path / "m", arch="bert")
    with pytest.raises(ValueError, match="corpus is empty"):
        tiny.build_tiny_causal_lm(tmp_path / "m", corpus="  \n")
    with pytest.raises(ValueError, match="built-in tiny models: tiny-gpt2, tiny-llama, tiny-bert"):
        tiny.tiny_model_path("tiny-gpt3")


def test_tiny_model_path_builds_once_under_the_cache_env(tmp_path, monkeypatch):
    # First use builds under $INTERP_SWEEPS_CACHE/tiny/<name>-v<version>; later uses reuse the files.
    monkeypatch.setenv("INTERP_SWEEPS_CACHE", str(tmp_path))
    path = tiny.tiny_model_path("tiny-gpt2")
    assert path == tmp_path / "tiny" / f"tiny-gpt2-v{tiny.TINY_VERSION}"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.tiny_model_path("tiny-gpt2") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary leftovers
    assert path.stat().st_mode & 0o755 == 0o755  # readable by other users' workers


def test_tiny_model_path_concurrent_builders_agree(tmp_path, monkeypatch):
    # Several builders racing on an empty cache all return the same complete directory, leaving no temp dirs.
    monkeypatch.setenv("INTERP_SWEEPS_CACHE", str(tmp_path))
    results, errors = [], []

    def build():
        try:
            results.append(tiny.tiny_model_path("tiny-bert"))
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    assert tiny._is_complete(results[0])
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [results[0].name]


def test_move_into_place_keeps_a_winner_and_replaces_a_broken_target(tmp_path, tiny_dirs):
    # A complete target that appeared meanwhile is kept; an incomplete leftover is replaced by our build.
    import shutil

    target = tmp_path / "target"
    shutil.copytree(tiny_dirs["gpt2"], target)
    ours = tmp_path / "ours"
    shutil.copytree(tiny_dirs["llama"], ours)
    tiny._move_into_place(ours, target)
    assert _weights(target).keys() == _weights(tiny_dirs["gpt2"]).keys()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    tiny._move_into_place(ours, broken)
    assert tiny._is_complete(broken) and not ours.exists()
