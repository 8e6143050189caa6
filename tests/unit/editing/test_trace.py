"""Causal tracing finds the planted fact where it was planted; hooks are generic over sites and undone."""

from __future__ import annotations

import pytest
import torch

from orchestrator.context import local_context
from tasks.common.tokens import subject_token_range
from tasks.editing.ops import trace
from tasks.editing.task import CausalTraceParams, TraceFact, causal_trace


def test_window_layers_follow_the_code_not_the_paper():
    # centre l, window 10: l-5 .. l+4 clipped to [0, L)
    assert trace.window_layers(7, 10, 48) == list(range(2, 12))
    assert trace.window_layers(2, 10, 48) == list(range(0, 7))
    assert trace.window_layers(46, 10, 48) == list(range(41, 48))
    assert trace.window_layers(3, 1, 4) == [3]


def test_subject_token_range(tiny_lm):
    _, tok = tiny_lm
    text = "The Eiffel Tower is located in the city of"
    start, end = subject_token_range(tok, text, "The Eiffel Tower")
    ids = tok(text)["input_ids"]
    assert start == 0 and tok.decode(ids[start:end]) == "The Eiffel Tower"
    start, end = subject_token_range(tok, "Where is Big Ben?", "Big Ben")
    assert tok.decode(tok("Where is Big Ben?")["input_ids"][start:end]).strip() == "Big Ben"
    with pytest.raises(ValueError, match="does not occur"):
        subject_token_range(tok, text, "Colosseum")


def _mean_grid(rows, site):
    cells = [r for r in rows if r["level"] == "cell" and r["site"] == site]
    n_tokens = 1 + max(r["token_index"] for r in cells)
    n_layers = 1 + max(r["layer"] for r in cells)
    grid = torch.zeros(n_tokens, n_layers)
    count = torch.zeros(n_tokens, n_layers)
    for r in cells:
        grid[r["token_index"], r["layer"]] += r["p_restored"]
        count[r["token_index"], r["layer"]] += 1
    return grid / count


def test_planted_fact_is_found_at_the_planted_layer_and_last_subject_token(planted_trace, planted):
    # The fact can only live in MLP `planted.layer` at the subject's last token (see the fixture), so
    # restoring that one MLP output must restore the answer best of all (token, layer) MLP sites, and
    # far above the corrupted baseline; an off-by-one in layers, tokens or sites would move the argmax.
    rows = planted_trace
    facts = [r for r in rows if r["level"] == "fact"]
    assert len(facts) == 8 and all(r["traced"] and r["correct_prediction"] for r in facts)
    assert all(r["p_clean"] > 0.95 and r["p_corrupted"] < 0.5 for r in facts)
    low = sum(r["p_corrupted"] for r in facts) / len(facts)
    last_subject, last_token = 1, 3  # "<first> <last> lives in"
    mlp = _mean_grid(rows, "mlp")
    assert divmod(int(mlp.argmax()), mlp.shape[1]) == (last_subject, planted.layer)
    assert mlp[last_subject, planted.layer] > low + 0.5  # measured ~0.96 vs ~0.2
    others = mlp.clone()
    others[last_subject, planted.layer] = 0
    assert others.max() < low + 0.15  # measured: at most ~0.08 above the baseline
    # residual stream: before the information moves, only the last subject token carries it
    hidden = _mean_grid(rows, "hidden")
    for layer in range(planted.layer + 1):
        assert int(hidden[:, layer].argmax()) == last_subject
        assert hidden[last_token, layer] == pytest.approx(low, abs=1e-6)  # the last token knows nothing yet
    assert hidden[last_token, -1] > 0.99  # restoring the final state restores the clean answer
    # attention: layers up to the planted one have zero output, so restoring it changes nothing at all
    attn = _mean_grid(rows, "attn")
    assert torch.allclose(attn[:, : planted.layer + 1], torch.full_like(attn[:, : planted.layer + 1], low), atol=1e-6)
    assert attn[last_token, planted.layer + 1 :].max() > low + 0.3  # the moving step is attention at the last token


def test_rows_are_a_layer_by_token_grid_per_site(planted_trace, planted):
    rows = planted_trace
    cells = [r for r in rows if r["level"] == "cell"]
    n_layers = planted.model.config.n_layer
    assert len(cells) == 8 * 3 * 4 * n_layers  # facts x sites x tokens x layers
    first = [r for r in cells if r["fact_index"] == 0 and r["site"] == "mlp"]
    assert sorted((r["token_index"], r["layer"]) for r in first) == [(t, layer) for t in range(4)
                                                                          for layer in range(n_layers)]
    assert [r["is_subject"] for r in first if r["layer"] == 0] == [True, True, False, False]
    assert all(r["indirect_effect"] == pytest.approx(r["p_restored"] - r["p_corrupted"]) for r in cells)
    assert {r["restore_window"] for r in cells if r["site"] == "hidden"} == {1}


def test_tracing_is_deterministic_and_leaves_no_hooks(planted):
    # common random numbers: the same noise seed gives identical grids; all hooks are removed
    text = "ann n1 lives in"
    ids = torch.tensor([planted.tokenizer(text)["input_ids"]])
    inp = trace.TraceInput(ids, (0, 2), planted.tokenizer.get_vocab()[planted.facts[1][1]])
    noise = trace.make_noise(5, 2, 64, 3.0, seed=1, device="cpu")
    first = trace.trace_grid(planted.model, inp, "mlp", noise, window=2)
    second = trace.trace_grid(planted.model, inp, "mlp", trace.make_noise(5, 2, 64, 3.0, 1, "cpu"), window=2)
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
    modules = list(planted.model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)
    with torch.no_grad():
        clean = planted.model(input_ids=ids).logits[0, -1].softmax(-1)[inp.answer_id].item()
    assert first[1] == pytest.approx(clean, rel=1e-5)


def test_noise_scale_is_three_stds_over_every_subject_token_occurrence(planted):
    # invariant: nu = 3 x the std over all elements of the embeddings of every subject's tokens, a token
    # counted each time it occurs (the original's collect_embedding_std concatenates per subject); the
    # planted subjects share 4 first names, so counting unique ids only gives another value
    import numpy as np

    subjects = [s for s, _ in planted.facts]
    weight = planted.model.transformer.wte.weight.detach().double().numpy()
    per_subject = [weight[planted.tokenizer(s, add_special_tokens=False)["input_ids"]] for s in subjects]
    expected = 3 * np.concatenate(per_subject).std(ddof=1)
    got = trace.embedding_noise_scale(planted.model, planted.tokenizer, subjects)
    assert got == pytest.approx(expected, rel=1e-5)
    unique = sorted({i for s in subjects for i in planted.tokenizer(s, add_special_tokens=False)["input_ids"]})
    assert abs(3 * weight[unique].std(ddof=1) - expected) > 1e-3 * expected


def test_only_correct_facts_are_traced_by_default(planted):
    subject, city = planted.facts[0]
    wrong = "c7" if city != "c7" else "c6"
    facts = [TraceFact(prompt="{} lives in", subject=subject, target=wrong)]
    ctx = local_context(seed=0)
    ctx.setup = (planted.model, planted.tokenizer)
    rows = causal_trace(CausalTraceParams(facts=facts, sites=["mlp"], window=1, samples=2), ctx)
    assert len(rows) == 1 and rows[0]["traced"] is False and rows[0]["correct_prediction"] is False
    rows = causal_trace(
        CausalTraceParams(facts=facts, sites=["mlp"], window=1, samples=2, only_correct=False, answer="expected"), ctx
    )
    assert rows[-1]["traced"] and rows[-1]["answer_token"].strip() == wrong
    with pytest.raises(ValueError, match="site"):
        CausalTraceParams(sites=["embed"])


@pytest.mark.parametrize("site, window", [("hidden", 1), ("mlp", 2), ("attn", 3)])
def test_reusing_the_corrupted_prefix_gives_the_full_forwards_numbers(planted, tiny_lm, site, window):
    # restorations from token t run positions t.. on the corrupted run's cached keys / values of ..t:
    # the grid equals the one of full forwards (the original's way) to float rounding, on the planted
    # model and on a tiny GPT-2 with working attention everywhere, subject in the middle of the prompt
    for model, tokenizer, text, subject in ((planted.model, planted.tokenizer, "the ann n1 lives in", (1, 3)),
                                            (*tiny_lm, "The Eiffel Tower is located in the city of", (1, 4))):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        inp = trace.TraceInput(ids, subject, 5)
        noise = trace.make_noise(4, subject[1] - subject[0], model.config.n_embd, 0.5, seed=1, device="cpu")
        assert trace.takes_cache(model)
        fast = trace.trace_grid(model, inp, site, noise, window=window)
        full = trace.trace_grid(model, inp, site, noise, window=window, reuse_prefix=False)
        torch.testing.assert_close(fast[0], full[0], rtol=1e-4, atol=1e-7)
        assert fast[1:] == full[1:]
        before = fast[0][: subject[0]]  # tokens before the subject are never corrupted: restoring them is a no-op
        torch.testing.assert_close(before, torch.full_like(before, full[2]), rtol=1e-4, atol=1e-7)
