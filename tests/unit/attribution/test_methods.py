"""Every attribution method: one finite score per input token; gradient methods match direct autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.attribution.ops import METHODS, attribute
from tasks.attribution.ops.attention import attention_maps, attention_row
from tasks.attribution.ops.reagent import ReagentConfig
from tasks.attribution.ops.samplers import UniformSampler
from tasks.common import gradients

IDS = [40, 300, 57, 120, 9, 211, 33]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", METHODS)
def test_one_finite_score_per_token(method, arch, tiny_lm, tiny_llama):
    # invariant: every method returns a finite, non-negative (L,) distribution over the prefix
    model, tok = tiny_lm if arch == "gpt2" else tiny_llama
    prefixes = [torch.tensor(IDS), torch.tensor(IDS[:3])]
    out = attribute(method, model, tok, prefixes, [5, 77], sampler=UniformSampler(tok),
                    reagent_config=ReagentConfig(max_steps=20, num_probes=3, keep_top_n=2),
                    generator=torch.Generator().manual_seed(0))
    for a, ids in zip(out, prefixes, strict=True):
        assert a.scores.shape == (len(ids),)
        assert torch.isfinite(a.scores).all()
        assert (a.scores >= 0).all()
        assert a.scores.sum().item() == pytest.approx(1.0, abs=1e-5)


def _embeds(model, ids):
    return model.get_input_embeddings()(torch.tensor(ids)[None]).detach()


def _prob(model, embeds, target, log=False):
    logits = model(inputs_embeds=embeds).logits[:, -1].float()
    return (logits.log_softmax(-1) if log else logits.softmax(-1))[:, target]


def _grad(model, point, target, log=False):
    point = point.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_prob(model, point, target, log).sum(), point)
    return g


def _per_token(attr):  # inseq aggregation: L2 over hidden, then divide by the sum
    raw = attr[0].norm(dim=-1).double()
    return (raw / raw.sum()).float()


def test_norm_matches_autograd(tiny_lm):
    # invariant: norm = softmax over positions of ||d log p(y) / d E_i||
    model, _tok = tiny_lm
    e = _embeds(model, IDS)
    expected = _grad(model, e, 5, log=True)[0].norm(dim=-1).double().softmax(-1).float()
    got = gradients.norm(model, torch.tensor(IDS), 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_input_x_gradient_matches_autograd(tiny_lm):
    # invariant: IxG = ||E_i * d p(y) / d E_i||, normalised to sum 1
    model, tok = tiny_lm
    e = _embeds(model, IDS)
    expected = _per_token(e * _grad(model, e, 5))
    got = gradients.input_x_gradient(model, torch.tensor(IDS), 5, tokenizer=tok)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def _baseline(model, tok):
    return _embeds(model, gradients.baseline_ids(torch.tensor(IDS), tok).tolist())


def test_integrated_gradients_matches_gauss_legendre(tiny_lm):
    # invariant: IG = (E - B) * sum_k w_k grad(B + a_k (E - B)), 50 Gauss-Legendre nodes on [0, 1]
    model, tok = tiny_lm
    e, b = _embeds(model, IDS), _baseline(model, tok)
    nodes, weights = np.polynomial.legendre.leggauss(50)
    total = torch.zeros_like(e)
    for a, w in zip((nodes + 1) / 2, weights / 2, strict=True):
        total += float(w) * _grad(model, b + float(a) * (e - b), 5)
    expected = _per_token((e - b) * total)
    got = gradients.integrated_gradients(model, torch.tensor(IDS), 5, tokenizer=tok)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)


def test_gradient_shap_matches_autograd(tiny_lm, monkeypatch):
    # invariant: GradientShap (stdevs 0) = (E - B) * mean_k grad(B + a_k (E - B)) for its drawn alphas
    model, tok = tiny_lm
    alphas = np.array([0.1, 0.35, 0.5, 0.8, 0.95])
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, n: alphas[:n])
    e, b = _embeds(model, IDS), _baseline(model, tok)
    mean = sum(_grad(model, b + float(a) * (e - b), 5) for a in alphas) / len(alphas)
    expected = _per_token((e - b) * mean)
    got = gradients.gradient_shap(model, torch.tensor(IDS), 5, tokenizer=tok)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_baseline_ids_keep_eos(tiny_lm):
    # invariant: inseq's baseline is unk everywhere except where the input holds eos
    _, tok = tiny_lm
    ids = torch.tensor([tok.eos_token_id, 40, 41])
    base = gradients.baseline_ids(ids, tok)
    assert base[0] == tok.eos_token_id and (base[1:] == tok.unk_token_id).all()


def test_attention_variants_by_hand():
    # invariant: all = layer mean, last = last layer, rollout = (0.5A2+0.5I)(0.5A1+0.5I), last row
    a1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    a2 = torch.tensor([[1.0, 0.0], [0.2, 0.8]], dtype=torch.float64)
    maps = torch.stack([a1, a2])
    torch.testing.assert_close(attention_row(maps, "all"), torch.tensor([0.35, 0.65], dtype=torch.float64))
    torch.testing.assert_close(attention_row(maps, "last"), a2[1])
    eye = torch.eye(2, dtype=torch.float64)
    expected = ((0.5 * a2 + 0.5 * eye) @ (0.5 * a1 + 0.5 * eye))[1]
    torch.testing.assert_close(attention_row(maps, "rollout"), expected)


def test_attention_maps_under_sdpa_model(tiny_paths):
    # invariant: a model loaded with SDPA still yields attentions (switched to eager, then restored)
    from tasks.common.models import load_causal_lm

    model, _ = load_causal_lm(tiny_paths["gpt2"], attn_implementation="sdpa")
    maps = attention_maps(model, torch.tensor(IDS))
    assert maps.shape == (2, len(IDS), len(IDS))
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, len(IDS), dtype=torch.float64))
    assert model.config._attn_implementation == "sdpa"


def test_one_table_of_methods():
    # Invariant: the method names are the shared gradient table and the attention table, in METHODS' order.
    from tasks.attribution.ops.attention import ATTENTION_METHODS
    from tasks.common.gradients import GRADIENT_METHODS

    assert ("reagent", *GRADIENT_METHODS, *ATTENTION_METHODS) == METHODS
