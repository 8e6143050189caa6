"""Batched, length-sorted hidden states (seeds.md A.2) on a tiny BERT built in the session."""

import pytest
import torch

from tasks.embedding.ops.hidden_states import hidden_states

TEXTS = ["the film was good .", "a", "i hated this movie . the plot is dull and the cast is weak .",
         "what a lovely story .", "we watched it on a friday evening ."]


def test_layer_zero_is_embedding_output(tiny_bert):
    model, tok = tiny_bert
    enc = hidden_states(model, tok, TEXTS, [0], max_length=24, batch_size=2)
    with torch.inference_mode():
        expected = model.embeddings(input_ids=enc.input_ids)  # word + position + type, LayerNorm
    torch.testing.assert_close(enc.hidden[0], expected, rtol=1e-5, atol=1e-6)
    assert enc.hidden[0].shape == (5, 24, model.config.hidden_size)


def test_batched_sorted_equals_one_by_one_original_order(tiny_bert):
    # padding to max_length as the original: every position, [PAD] rows included, equals a single-text run
    model, tok = tiny_bert
    enc = hidden_states(model, tok, TEXTS, [0, 2], max_length=24, batch_size=2)
    for j, text in enumerate(TEXTS):
        one = tok([text], padding="max_length", max_length=24, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = model(**one, output_hidden_states=True).hidden_states
        assert torch.equal(enc.input_ids[j], one["input_ids"][0])
        for layer in (0, 2):
            torch.testing.assert_close(enc.hidden[layer][j], out[layer][0], rtol=1e-4, atol=1e-5)
    assert enc.n_computed.tolist() == [24] * 5 and enc.computed_tokens == 5 * 24


def test_longest_padding_matches_on_real_tokens(tiny_bert):
    model, tok = tiny_bert
    full = hidden_states(model, tok, TEXTS, [1], max_length=24, batch_size=2)
    short = hidden_states(model, tok, TEXTS, [1], max_length=24, batch_size=2, padding="longest")
    lengths = full.attention_mask.sum(dim=1)
    for j, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(short.hidden[1][j, :length], full.hidden[1][j, :length], rtol=1e-4, atol=1e-5)
        assert short.n_computed[j] >= length and not short.hidden[1][j, short.n_computed[j]:].any()
    assert short.computed_tokens < full.computed_tokens and short.real_tokens == full.real_tokens


def test_layer_range(tiny_bert):
    model, tok = tiny_bert
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        hidden_states(model, tok, TEXTS, [3], max_length=16)
