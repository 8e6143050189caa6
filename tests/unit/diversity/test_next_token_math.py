"""Next-token statistics against hand-computed values (no real model: small fake causal LMs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tasks.diversity import ops as compute


class ConstantLM(torch.nn.Module):
    """Same logits at every position: a fixed next-token distribution."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **_):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, t, -1).clone())


class EchoLM(torch.nn.Module):
    """Logits peaked on the current input token (causal: position t sees only token t)."""

    def __init__(self, vocab: int, peak: float = 3.0):
        super().__init__()
        self.vocab, self.peak = vocab, peak
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids, self.vocab).float() * self.peak)


def test_entropy_of_known_distribution():
    # H(1/2, 1/4, 1/4) = 1.5 ln 2; uniform over V gives ln V
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    h = compute.entropy_from_logprobs(logp)
    assert h[0].item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert h[1].item() == pytest.approx(math.log(3), abs=1e-6)


def test_entropy_zero_probabilities_exact_and_original_eps():
    # exact: 0 log 0 = 0; original: zeros become 1e-7, adding -1e-7 ln 1e-7 per zero entry
    logp = torch.log_softmax(torch.tensor([0.0, 0.0, -float("inf"), -float("inf")]), -1)
    assert compute.entropy_from_logprobs(logp).item() == pytest.approx(math.log(2), abs=1e-6)
    with_eps = compute.entropy_from_logprobs(logp, zero_eps=1e-7).item()
    assert with_eps == pytest.approx(math.log(2) + 2 * (-1e-7 * math.log(1e-7)), abs=1e-6)


def test_window_stats_perplexity_hand_case():
    # targets with probabilities 1/2 and 1/4: PPL = exp(-(ln 1/2 + ln 1/4) / 2) = sqrt(8)
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]]))
    targets = torch.tensor([[0, 1]])
    mask = torch.tensor([[True, True]])
    s = compute.window_stats(logits, targets, mask, mask)
    assert compute.perplexity(float(s["nll"][0]), float(s["n_pred"][0])) == pytest.approx(math.sqrt(8), rel=1e-6)
    assert float(s["confidence"][0]) / 2 == pytest.approx(0.5)
    assert float(s["n_correct"][0]) == 1.0  # argmax 0 is right for the first target only
    assert float(s["prob"][0]) == pytest.approx(0.75)


def test_rolling_windows_match_the_original_layout():
    # L = 2500, M = 1024: windows predict 1024, 1024, 452 tokens; each input is at most 1024 long
    ids = list(range(1, 2501))
    windows = list(compute.rolling_windows(ids, prefix_id=0, max_length=1024))
    assert [n for _, n in windows] == [1024, 1024, 452]
    assert all(len(tokens) - 1 == 1024 for tokens, _ in windows)
    assert windows[0][0][0] == 0  # first input starts with the prefix token
    predicted = [t for tokens, n in windows for t in tokens[-n:]]
    assert predicted == ids  # every token predicted exactly once, in order
    assert windows[2][0][-453:-452] == [ids[2047]]  # first target of the last window has context


def test_rolling_windows_context_len_and_short_docs():
    ids = list(range(10, 30))  # L = 20
    windows = list(compute.rolling_windows(ids, 0, max_length=8, context_len=3))  # pred_len 6
    assert [n for _, n in windows] == [8, 6, 6]
    assert [t for tokens, n in windows for t in tokens[-n:]] == ids
    assert list(compute.rolling_windows([5, 6], 0, max_length=8)) == [([0, 5, 6], 2)]
    assert list(compute.rolling_windows([], 0, max_length=8)) == []
    with pytest.raises(ValueError, match="context_len"):
        list(compute.rolling_windows(ids, 0, max_length=4, context_len=5))


def test_uniform_model_has_perplexity_v_and_entropy_ln_v():
    v = 8
    model = ConstantLM(torch.zeros(v))
    docs = [([1, 2, 3, 4, 5], 9), ([6, 7], 3), ([1] * 30, 30)]
    rows, summary, pbar = compute.next_token_statistics(model, docs, prefix_id=0, pad_id=0, max_length=8, batch_size=3)
    assert summary["perplexity"] == pytest.approx(v, rel=1e-5)
    assert summary["entropy"] == pytest.approx(math.log(v), rel=1e-5)
    assert summary["confidence"] == pytest.approx(1 / v, rel=1e-5)
    assert summary["n_tokens"] == 37 and summary["n_docs"] == 3
    assert summary["bits_per_byte"] == pytest.approx(37 * math.log2(v) / 42, rel=1e-5)
    assert pbar.sum() == pytest.approx(1.0)
    # uniform: C_j = (j + 1) / 8 first exceeds 0.7 at j = 5 and 0.9 at j = 7
    assert summary["vocab_share_70"] == 5 / 8 and summary["vocab_share_90"] == 7 / 8
    assert [r["doc_index"] for r in rows] == [0, 1, 2]


def test_mass_rank_fraction_of_a_peaked_distribution():
    p = np.array([0.05, 0.6, 0.2, 0.15])  # sorted: 0.6, 0.2, 0.15, 0.05 -> C = 0.6, 0.8, 0.95, 1.0
    assert compute.mass_rank_fraction(p, 0.7) == 1 / 4
    assert compute.mass_rank_fraction(p, 0.9) == 2 / 4


def test_batching_and_padding_do_not_change_statistics():
    # the echo model sees real tokens only where it should; pads must not leak into any statistic
    model = EchoLM(vocab=12)
    rng = np.random.default_rng(0)
    docs = [(rng.integers(1, 12, size=n).tolist(), n) for n in (3, 17, 9, 1, 25)]
    results = [compute.next_token_statistics(model, docs, 0, 11, max_length=8, batch_size=b) for b in (1, 3, 7)]
    for rows, summary, pbar in results[1:]:
        for key in ("perplexity", "entropy", "confidence", "top1_accuracy", "vocab_share_90"):
            assert summary[key] == pytest.approx(results[0][1][key], rel=1e-9)
        np.testing.assert_allclose(pbar, results[0][2], rtol=1e-9)
        assert [r["perplexity"] for r in rows] == pytest.approx([r["perplexity"] for r in results[0][0]], rel=1e-9)


def test_stats_positions_all_recounts_the_last_window():
    # original: entropy, confidence and the mean distribution over every input position, so the last
    # window of a 20-token document (M = 8: windows predict 8, 8, 4) re-counts 4 positions
    v = 30
    model = EchoLM(vocab=v)
    ids = list(range(1, 21))
    docs = [(ids, 20)]
    _, s_pred, pbar_pred = compute.next_token_statistics(model, docs, 0, 0, 8)
    options = compute.NextTokenOptions(stats_positions="all")
    _, s_all, pbar_all = compute.next_token_statistics(model, docs, 0, 0, 8, options=options)
    assert s_pred["perplexity"] == pytest.approx(s_all["perplexity"])  # log-probs are exact either way

    def mean_dist(inputs):  # the echo model's mean next-token distribution over these input tokens
        return torch.softmax(torch.nn.functional.one_hot(torch.tensor(inputs), v).float() * 3,
                             -1).double().mean(0).numpy()

    first, second = [0, *ids[:7]], ids[7:15]
    np.testing.assert_allclose(pbar_pred, (mean_dist(first) + mean_dist(second) + mean_dist(ids[15:19])) / 3, rtol=1e-6)
    np.testing.assert_allclose(pbar_all, (mean_dist(first) + mean_dist(second) + mean_dist(ids[11:19])) / 3, rtol=1e-6)


def test_entropy_first_document_only_option():
    v = 4
    docs = [([1, 2, 3], 3), ([1] * 6, 6)]

    class TwoDocLM(torch.nn.Module):  # uniform for token 1, peaked otherwise
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

        def forward(self, input_ids, attention_mask=None, **_):
            logits = torch.nn.functional.one_hot(input_ids, v).float() * 4
            return SimpleNamespace(logits=torch.where((input_ids == 1).unsqueeze(-1), torch.zeros_like(logits), logits))

    rows, s_tokens, _ = compute.next_token_statistics(TwoDocLM(), docs, 0, 0, 8)
    _, s_first, _ = compute.next_token_statistics(
        TwoDocLM(), docs, 0, 0, 8, options=compute.NextTokenOptions(entropy_aggregate="first_document")
    )
    assert s_first["entropy"] == pytest.approx(rows[0]["entropy"])
    expected = (rows[0]["entropy"] * 3 + rows[1]["entropy"] * 6) / 9  # token-weighted over all documents
    assert s_tokens["entropy"] == pytest.approx(expected)


def test_mean_probs_flush_every_drops_trailing_documents():
    # original: pending windows join the average only after documents 0, k, 2k, ...; later ones are lost
    model = EchoLM(vocab=6, peak=5.0)
    docs = [([1, 1], 2), ([2, 2], 2), ([3, 3], 2), ([4, 4], 2)]
    _, full, pbar_full = compute.next_token_statistics(model, docs, 5, 0, 8)
    options = compute.NextTokenOptions(mean_probs_flush_every=2)
    _, flushed, pbar_flushed = compute.next_token_statistics(model, docs, 5, 0, 8, options=options)
    _, _first3, pbar_first3 = compute.next_token_statistics(model, docs[:3], 5, 0, 8)
    assert full["mean_probs_windows"] == 4 and flushed["mean_probs_windows"] == 3
    np.testing.assert_allclose(pbar_flushed, pbar_first3)
    assert not np.allclose(pbar_flushed, pbar_full)
    assert flushed["perplexity"] == pytest.approx(full["perplexity"])  # only the average distribution changes


def test_empty_documents_are_skipped_by_the_first_document_entropy_and_the_flush():
    # invariant: the original skips documents without tokens (get_compute_data returns None), so the
    # first-document entropy is the first NON-EMPTY document's, and an empty document at a flush index
    # flushes nothing (its `i % 500` check is skipped too): pending windows stay pending. Whatever the
    # batch size (an empty document finishes before the batched windows of earlier ones)
    model = EchoLM(vocab=6, peak=5.0)
    first = compute.NextTokenOptions(entropy_aggregate="first_document")
    flush = compute.NextTokenOptions(mean_probs_flush_every=2)
    _, _, pbar_first_doc = compute.next_token_statistics(model, [([1, 1], 2)], 5, 0, 8)
    for batch_size in (1, 4):
        for docs in ([([], 0), ([1, 2, 3], 3), ([4] * 5, 5)], [([1, 2, 3], 3), ([], 0), ([4] * 5, 5)]):
            rows, summary, _ = compute.next_token_statistics(model, docs, 5, 0, 8, batch_size, options=first)
            by_index = {r["doc_index"]: r for r in rows}
            nonempty = next(i for i, (ids, _) in enumerate(docs) if ids)
            assert summary["entropy"] == pytest.approx(by_index[nonempty]["entropy"]), (batch_size, docs)
        docs = [([1, 1], 2), ([2, 2], 2), ([], 0)]  # index 2 is empty: document 1 is never flushed
        _, flushed, pbar_flushed = compute.next_token_statistics(model, docs, 5, 0, 8, batch_size, options=flush)
        assert flushed["mean_probs_windows"] == 1, batch_size
        np.testing.assert_allclose(pbar_flushed, pbar_first_doc)


def test_token_weighting_of_the_mean_distribution():
    model = EchoLM(vocab=6, peak=5.0)
    docs = [([1], 1), ([2, 2, 2], 3)]
    _, _, window_avg = compute.next_token_statistics(model, docs, 5, 0, 8)
    _, _, token_avg = compute.next_token_statistics(
        model, docs, 5, 0, 8, options=compute.NextTokenOptions(mean_probs_weighting="token")
    )
    p = torch.softmax(torch.nn.functional.one_hot(torch.tensor([5, 1, 5, 2, 2]), 6).float() * 5, -1).double().numpy()
    np.testing.assert_allclose(window_avg, (p[0] + p[2:5].mean(0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(token_avg, (p[0] + p[2:5].sum(0)) / 4, rtol=1e-6)


def test_options_are_validated():
    with pytest.raises(ValueError, match="stats_positions"):
        compute.NextTokenOptions(stats_positions="every")
