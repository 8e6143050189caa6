"""Scoring, losses, verdicts and training bookkeeping of the canonical-examples method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.editing.data import DATASETS, Example
from tasks.editing.ops import evaluation, finetune
from tasks.editing.ops import losses as compute


def _n(p: float) -> float:
    return -math.log(p)


def test_verdicts_flip_at_the_thresholds():
    # each dataset's verdict flips exactly where the original's threshold puts it
    country = DATASETS["country"].threshold  # p(suffix) >= 0.2
    assert compute.example_success(np.array([[_n(0.21)], [_n(0.19)]]), "good", country).tolist() == [True, False]
    stereo = DATASETS["stereoset"].threshold  # success iff p(stereotype) <= 0.001
    assert compute.example_success(np.array([[_n(0.0009)], [_n(0.0011)]]), "bad", stereo).tolist() == [True, False]
    gender = DATASETS["gender"].threshold  # p(he)/p(she) within 1.5x
    pairs = np.array([[_n(0.149), _n(0.1)], [_n(0.151), _n(0.1)], [_n(0.1), _n(0.151)]])
    assert compute.example_success(pairs, "balance", gender).tolist() == [True, False, False]
    verb = DATASETS["verb"].threshold  # p(correct) >= 16 p(wrong)
    pairs = np.array([[_n(0.161), _n(0.01)], [_n(0.159), _n(0.01)]])
    assert compute.example_success(pairs, "good-v-bad", verb).tolist() == [True, False]


def test_verdict_uses_summed_nll_and_loss_uses_mean_nll():
    # a two-token suffix with p = 0.5 per token: summed n = 2 ln 2 (p(whole) = 0.25 >= 0.2 succeeds),
    # while the training loss is the per-token mean ln 2
    n = torch.tensor([[2 * math.log(2)]])
    length = torch.tensor([[2.0]])
    assert compute.canonical_loss(n, length, "good").item() == pytest.approx(math.log(2))
    assert compute.example_success(n.numpy(), "good", DATASETS["country"].threshold).tolist() == [True]
    assert compute.example_success(np.array([[3 * math.log(2)]]), "good",
                                   DATASETS["country"].threshold).tolist() == [False]


def test_canonical_losses_against_numpy():
    rng = np.random.default_rng(0)
    n = rng.uniform(0.5, 5, size=(6, 2))
    length = rng.integers(1, 4, size=(6, 2)).astype(float)
    m = n / length
    expected = {
        "good": m[:, 0].mean(),
        "bad": -m[:, 0].mean(),
        "balance": np.abs(m[:, 0] - m[:, 1]).mean(),
        "good-v-bad": (m[:, 0] - m[:, 1]).mean(),
    }
    for loss_type, value in expected.items():
        got = compute.canonical_loss(torch.tensor(n), torch.tensor(length), loss_type).item()
        assert got == pytest.approx(value), loss_type
    with pytest.raises(ValueError, match="loss_type"):
        compute.canonical_loss(torch.tensor(n), torch.tensor(length), "nope")


def test_suffix_nll_matches_unbatched_log_softmax(tiny_lm):
    # padded batch scoring equals scoring each example alone with an explicit log-softmax
    model, tok = tiny_lm
    examples = [Example("The capital of France is", (" Paris",)), Example("Big Ben is in", (" the city of London",))]
    encoded = [compute.encode_example(tok, e.prefix, e.suffixes[0], 128) for e in examples]
    with torch.no_grad():
        n, length = compute.suffix_nll(model, encoded, "cpu")
    for i, (ids, n_prefix) in enumerate(encoded):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        manual = -sum(logp[t - 1, ids[t]].item() for t in range(n_prefix, len(ids)))
        assert n[i].item() == pytest.approx(manual, rel=1e-4)
        assert length[i].item() == len(ids) - n_prefix
    # the suffix is tokenized on its own, without special tokens, and appended
    ids, n_prefix = encoded[0]
    assert ids[n_prefix:] == tok(" Paris", add_special_tokens=False)["input_ids"]


def test_prefix_truncated_from_the_left_to_fit():
    class Tok:
        bos_token_id = eos_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [len(w) for w in text.split()]}

    ids, n_prefix = compute.encode_example(Tok(), "a bb ccc dddd eeeee", "xx yyy", max_length=4)
    assert ids == [4, 5, 2, 3] and n_prefix == 2


def test_text_loss_is_a_token_micro_average(tiny_lm):
    model, tok = tiny_lm
    chunks = compute.encode_texts(tok, ["One short text.", "A second and somewhat longer text here."], 128)
    loss, count = compute.text_loss(model, chunks, "cpu")
    total, tokens = 0.0, 0
    for ids in chunks:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        total += -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)))
        tokens += len(ids) - 1
    assert count == tokens and loss == pytest.approx(total / tokens, rel=1e-5)
    assert all(len(c) <= 5 for c in compute.encode_texts(tok, ["a long text " * 20], 5))


def test_kl_to_reference_direction():
    ref = torch.tensor([[[2.0, 0.0, -1.0]]])
    new = torch.tensor([[[0.0, 1.0, 0.0]]])
    p, q = torch.softmax(ref, -1), torch.softmax(new, -1)
    expected = (p * (p.log() - q.log())).sum()  # KL(p_ref || p_new)
    assert compute.kl_to_reference(new, ref, torch.ones(1, 1)).item() == pytest.approx(expected.item())


def test_cosine_schedule_factors_of_the_original():
    factors = [round(compute.cosine_factor(e, 10), 3) for e in range(10)]
    assert factors == [1.0, 0.976, 0.905, 0.794, 0.655, 0.5, 0.345, 0.206, 0.095, 0.024]


def test_lora_block_rule():
    # c = ceil(L p), mid = L // 2, mid - c//2 .. mid + c//2 (+1 if c odd), inclusive; index L dropped
    assert finetune.lora_block(12, 0.5) == list(range(3, 10))  # c = 6: 3..9
    assert finetune.lora_block(6, 0.3) == [2, 3, 4]  # c = 2: 2..4
    assert finetune.lora_block(12, 0.9) == list(range(1, 12))  # c = 11: 1..12, 12 matches nothing
    with pytest.raises(ValueError, match="lora_layer_fraction"):
        finetune.lora_block(12, 0.0)


def test_league_epoch_selection():
    # last epoch strictly inside the ball on val; epoch 0 always qualifies; <= variant for test walks
    losses = [2.0, 2.001, 2.0019, 2.002, 2.01]
    assert evaluation.select_league_epoch(losses, 1e-3) == 2
    assert evaluation.select_league_epoch(losses, 1e-3, strict=False) == 3
    assert evaluation.select_league_epoch([2.0, 3.0], 1e-5) == 0


def test_grad_accumulation_quirk_step_counts(tiny_lm):
    # N = 119 examples, batch 1, group 5: the original steps floor(119/5) = 23 times per epoch;
    # the fixed accumulation also steps on the partial last group: ceil(119/5) = 24
    model, tok = tiny_lm
    examples = [Example("The capital is", (" Paris",))] * 119
    for quirk, steps in ((True, 23), (False, 24)):
        trained = finetune.prepare_model(model, "layers", trainable_layers=[-1])
        config = finetune.TrainConfig(loss_type="good", lr=1e-4, epochs=1, grad_acc_quirk=quirk, max_length=32)
        history = finetune.train(trained, tok, examples, config, "cpu")
        assert history.steps == [0, steps]
