"""ROME: the closed-form rank-one update, its insertion into real layers, and an edit of a planted fact."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from orchestrator.context import local_context
from tasks.editing.ops import _arch, rome
from tasks.editing.task import RomeParams, rome_edit


def test_rank_one_update_maps_the_key_to_v_star():
    # (W + u r^T) applied to k_b equals v*, the update has rank 1, keys orthogonal to u are unchanged
    g = torch.Generator().manual_seed(0)
    D, d = 12, 5
    W = torch.randn(D, d, generator=g, dtype=torch.float64)  # (in, out) layout
    C = (lambda A: A @ A.T + 0.1 * torch.eye(D, dtype=torch.float64))(
        torch.randn(D, D, generator=g, dtype=torch.float64))
    k_bar, k_b, v_star = (torch.randn(n, generator=g, dtype=torch.float64) for n in (D, D, d))
    u = torch.linalg.solve(C, k_bar)
    u = u / u.norm()
    o_b = W.T @ k_b
    r = rome.rank_one_right_vector(u, v_star, k_b, o_b)
    W_new = W + torch.outer(u, r)
    assert torch.allclose(W_new.T @ k_b, v_star, rtol=1e-10)
    assert torch.linalg.matrix_rank(W_new - W).item() == 1
    k_perp = torch.randn(D, generator=g, dtype=torch.float64)
    k_perp = k_perp - (k_perp @ u) * u
    assert torch.allclose(W_new.T @ k_perp, W.T @ k_perp, atol=1e-12)


def test_rank_one_update_solves_the_constrained_least_squares_problem():
    # with C = K K^T and k_bar = k_b, the update equals the solution of
    # min ||(W + dW) K - W K||  s.t.  (W + dW) k* = v*, from the KKT system solved numerically
    rng = np.random.default_rng(1)
    D, d, n = 8, 3, 50
    W = rng.normal(size=(d, D))  # (out, in) layout here
    K = rng.normal(size=(D, n))
    C = K @ K.T
    k_star, v_star = rng.normal(size=D), rng.normal(size=d)
    kkt = np.block([[2 * C, k_star[:, None]], [k_star[None, :], np.zeros((1, 1))]])
    target = v_star - W @ k_star
    dW = np.stack([np.linalg.solve(kkt, np.concatenate([np.zeros(D), [c]]))[:D] for c in target])
    u = torch.linalg.solve(torch.tensor(C), torch.tensor(k_star))
    u = u / u.norm()
    r = rome.rank_one_right_vector(u, torch.tensor(v_star), torch.tensor(k_star), torch.tensor(W @ k_star))
    assert np.allclose(torch.outer(u, r).numpy().T, dW, atol=1e-8)


def _llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_inserted_update_maps_the_bare_prompt_to_v_star_and_is_undone(tiny_lm, arch):
    # Conv1D (GPT-2, weight (in, out)) and Linear (Llama, weight (out, in)) layouts: after insertion the
    # layer's output at the subject's last token equals v*; leaving the block restores W exactly,
    # also when the block raises
    model, tok = tiny_lm if arch == "gpt2" else (_llama(tiny_lm[1]), tiny_lm[1])
    hp = rome.RomeHparams(layer=1, v_num_grad_steps=3)
    prompt, subject = "{} is located in the city of", "The Eiffel Tower"
    update = rome.compute_rome_update(model, tok, hp, prompt, subject, "Rome", ["{}", "Hello. {}"], None, "cpu")
    text = prompt.format(subject)
    pos = rome.subject_last_index(tok, text, subject)
    weight = _arch.down_proj(model, 1).weight
    original = weight.detach().clone()
    with rome.applied_update(model, update):
        _, value = rome.keys_and_values(model, 1, [tok(text)["input_ids"]], [pos], "cpu")
        assert torch.allclose(value[0], update.v_star, atol=1e-4, rtol=1e-4)
        assert not torch.equal(weight, original)
    assert torch.equal(weight, original)
    with pytest.raises(RuntimeError, match="boom"), rome.applied_update(model, update):
        raise RuntimeError("boom")
    assert torch.equal(weight, original)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def _run(setup, **kwargs):
    params = RomeParams(**kwargs)
    ctx = local_context(seed=params.seed)
    ctx.setup = setup
    return rome_edit(params, ctx)


TEMPLATES = ["{}", "the a . {}", "it was on the . {}", "he . {}", "by a and of to . {}", "she was at . {}"]


@pytest.fixture(scope="module")
def planted_edit(planted, tmp_path_factory):
    # edit fact 0 of the planted model at its planted layer; C from random word sequences in a jsonl.
    # Fixed filler prefixes as context templates: this toy model only ever generates city tokens, so
    # sampled templates would put the old answer into every prefix. cov_ridge 1e-2: the layer's keys
    # depend on (token, position) only and lie near a 64-dim manifold of the 256-dim key space, so C is
    # ill-conditioned (the released hparams are kept otherwise).
    rng = random.Random(0)
    words = sorted(w for w in planted.tokenizer.get_vocab() if not w.startswith(("<", "[")))
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    path = tmp_path_factory.mktemp("cov") / "cov.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    subject, city = planted.facts[0]
    new_city = "c7" if city != "c7" else "c6"
    same_city = [s for s, c in planted.facts[1:] if c == city]
    before = {k: v.detach().clone() for k, v in planted.model.state_dict().items()}
    rows = _run(
        (planted.model, planted.tokenizer), subject=subject, prompt="{} lives in", target_new=new_city,
        target_true=city, paraphrases=["to the . {} lives in"], neighborhood=[f"{s} lives in" for s in same_city],
        layer=planted.layer, cov_text=str(path), cov_ridge=1e-2, context_templates=TEMPLATES,
    )
    return rows, before, len(same_city), texts, (subject, new_city)


def test_rome_edit_makes_the_new_fact_win_while_unrelated_prompts_barely_move(planted_edit):
    rows, _, n_neighbours, _, _ = planted_edit
    rewrite = next(r for r in rows if r.get("prompt_type") == "rewrite")
    assert rewrite["p_new_before"] < 0.01 < 0.99 < rewrite["p_true_before"]
    assert rewrite["p_new_after"] > rewrite["p_true_after"]
    assert rewrite["p_new_after"] > 0.9
    neighbours = [r for r in rows if r.get("prompt_type") == "neighborhood"]
    assert len(neighbours) == n_neighbours >= 3
    changes = [abs(r["p_true_after"] - r["p_true_before"]) for r in neighbours]
    assert sum(changes) / len(changes) < 0.02  # measured ~0.004: same-city subjects keep their city
    assert all(r["p_true_after"] > r["p_new_after"] for r in neighbours)
    agg = next(r for r in rows if r["level"] == "aggregate")
    assert agg["efficacy_score"] == 1.0 and agg["efficacy_score_before"] == 0.0
    assert agg["neighborhood_score"] == 1.0
    assert agg["neighborhood_abs_change"] == pytest.approx(sum(changes) / len(changes))
    assert agg["paraphrase_score"] == 1.0  # the fact moved also behind a filler prefix (shifted positions)
    assert abs(agg["degradation_general"]) < 0.02  # loss on the covariance text barely moves
    assert agg["edit_layer"] == 1 and agg["update_norm"] > 0


def test_rome_edit_leaves_every_other_subject_alone(planted_edit, planted):
    # all 47 other subjects (any city): p(own city) before vs after the same update, measured
    _, _, _, texts, (subject, new_city) = planted_edit
    model, tok = planted.model, planted.tokenizer
    vocab = tok.get_vocab()
    chunks = [tok(t)["input_ids"] for t in texts]
    cov_inv = rome.inverse_second_moment(rome.second_moment(model, planted.layer, chunks, "cpu"), 1e-2)
    update = rome.compute_rome_update(
        model, tok, rome.RomeHparams(layer=planted.layer), "{} lives in", subject, new_city, TEMPLATES, cov_inv, "cpu"
    )

    def own_answers():
        out = []
        for s, city in planted.facts[1:]:
            with torch.no_grad():
                probs = model(input_ids=torch.tensor([tok(f"{s} lives in")["input_ids"]])).logits[0, -1].softmax(-1)
            out.append((probs[vocab[city]].item(), int(probs.argmax()) == vocab[city]))
        return out

    before = own_answers()
    with rome.applied_update(model, update):
        after = own_answers()
    changes = [abs(a[0] - b[0]) for a, b in zip(after, before, strict=True)]
    assert sum(changes) / len(changes) < 0.01  # measured ~0.001
    assert all(kept for _, kept in after)


def test_rome_task_leaks_nothing_into_the_setup_model(planted_edit, planted):
    _, before, _, _, _ = planted_edit
    state = planted.model.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in before)
    assert all(p.requires_grad and p.grad is None for p in planted.model.parameters())


def test_rome_task_on_a_builtin_fact(tiny_lm):
    # the default request path (a built-in CounterFact-style fact, general text for C) runs end to end
    # layer 0 of 2: an edit of the last layer at the subject cannot reach the last position
    rows = _run(tiny_lm, fact=0, layer=0, template_lengths=[(3, 2)], cov_ridge=1e-3)
    kinds = [r.get("prompt_type") for r in rows if r["level"] == "prompt"]
    assert kinds == ["rewrite", "paraphrase", "neighborhood", "neighborhood"]
    agg = rows[-1]
    assert agg["level"] == "aggregate" and agg["edit_subject"] == "The Eiffel Tower"
    assert agg["target_new_text"] == " Rome" and agg["target_true_text"] == " Paris"
    assert rows[0]["p_new_after"] > rows[0]["p_new_before"]
    assert not {k for r in rows for k in r} & set(RomeParams.model_fields)  # no column named like a parameter
    assert len({tuple(r) for r in rows}) == 1  # one schema for every row
    with pytest.raises(ValueError, match="given together"):
        RomeParams(subject="x")

