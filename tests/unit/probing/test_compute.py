"""The probing maths against hand-computed or independent values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.probing import ops as compute


def test_variant_text():
    assert compute.variant_text("Cat", "space_lower") == " cat"
    assert compute.variant_text("cat", "bare_lower") == "cat"
    assert compute.variant_text("cat", "space_cap") == " Cat"
    assert compute.variant_text(" dog", "bare_upper") == "DOG"
    with pytest.raises(ValueError, match="variant must be one of"):
        compute.variant_text("cat", "spaced")


def test_swap_rows_matches_numpy():
    w = torch.arange(20.0).reshape(5, 4)
    ref = w.numpy().copy()
    ref[[1, 3]] = ref[[3, 1]]
    ref[[0, 4]] = ref[[4, 0]]
    compute.swap_rows(w, [(1, 3), (0, 4)])
    np.testing.assert_array_equal(w.numpy(), ref)
    with pytest.raises(ValueError, match="two swap pairs"):
        compute.swap_rows(w, [(1, 3), (3, 2)])


def test_edited_embeddings_restores_exactly(planted_lm):
    model, _ = planted_lm
    weight = model.get_input_embeddings().weight
    saved = weight.detach().clone()

    def edit(w):
        return compute.noise_rows(w, [3, 5], 1.0, torch.Generator().manual_seed(0))

    with pytest.raises(RuntimeError), compute.edited_embeddings(model, edit):
        assert not torch.equal(weight, saved)
        raise RuntimeError("boom")
    assert torch.equal(weight, saved)


def test_rank_of():
    p = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    assert compute.rank_of(p, 2).tolist() == [1, 2]


def test_input_noise_zero_and_positions(planted_lm):
    model, tokenizer = planted_lm
    ids = compute.prompt_ids(tokenizer, "The cat is")
    clean = compute.next_token_probs(model, ids)
    probs = compute.noised_distributions(model, ids, [1], [0.0, 1.0], 3, torch.Generator().manual_seed(0))
    assert probs.shape == (2, 3, len(clean))
    torch.testing.assert_close(probs[0], clean.expand(3, -1), rtol=1e-5, atol=1e-6)
    # noise at position 1 through the hook == the same noise added to the embedding fed as inputs_embeds
    z = torch.randn((3, 1, 64), generator=torch.Generator().manual_seed(0))
    embeds = model.get_input_embeddings()(torch.tensor([ids] * 3)).detach().clone()
    embeds[:, 1] += z[:, 0]
    with torch.no_grad():
        ref = model(inputs_embeds=embeds).logits[:, -1].softmax(-1)
    torch.testing.assert_close(probs[1], ref, rtol=1e-4, atol=1e-6)


def test_gradient_x_input_matches_autograd(planted_lm):
    model, tokenizer = planted_lm
    ids = torch.tensor(compute.prompt_ids(tokenizer, "The dog is"))
    target = compute.single_token_id(tokenizer, " blue")
    scores = compute.token_saliency(model, tokenizer, ids, target, "gradient_x_input")
    embeds = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    p = model(inputs_embeds=embeds).logits[0, -1].softmax(-1)[target]
    (grad,) = torch.autograd.grad(p, embeds)
    torch.testing.assert_close(scores, (grad * embeds)[0].sum(-1).detach(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("baseline", ["bos", "eos", "zero", "unk"])
def test_integrated_gradients_completeness(planted_lm, baseline):
    """IG scores add up to p(target | input) - p(target | baseline) (Gauss-Legendre, 50 steps)."""
    model, tokenizer = planted_lm
    ids = torch.tensor(compute.prompt_ids(tokenizer, "The cat is"))
    target = compute.single_token_id(tokenizer, " red")
    scores = compute.token_saliency(model, tokenizer, ids, target, "integrated_gradients", baseline, n_steps=50)
    base = compute.baseline_embeddings(model, tokenizer, ids, baseline)
    with torch.no_grad():
        p_in = model(input_ids=ids[None]).logits[0, -1].softmax(-1)[target]
        p_base = model(inputs_embeds=base).logits[0, -1].softmax(-1)[target]
    assert float(scores.sum()) == pytest.approx(float(p_in - p_base), abs=2e-3)


def test_attribution_methods_reused(planted_lm):
    model, tokenizer = planted_lm
    ids = torch.tensor(compute.prompt_ids(tokenizer, "The cat is"))
    target = compute.single_token_id(tokenizer, " red")
    for method in ("norm", "input_x_gradient"):
        scores = compute.token_saliency(model, tokenizer, ids, target, method)
        assert scores.shape == (len(ids),)
        assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)  # the attribution family normalises


def test_layer_groups_cover_every_parameter(planted_lm):
    model, _ = planted_lm
    groups = compute.layer_groups(model)
    assert [g for g, _ in groups] == [0, 1, None]
    assert sum(p.numel() for _, ps in groups for p in ps) == sum(p.numel() for p in model.parameters())


def test_keep_output_edits_the_input_side_only(planted_lm):
    """Tied embeddings: keep_output leaves absent tokens' swap without effect; a plain swap moves outputs."""
    model, tokenizer = planted_lm
    cat, dog = compute.single_token_id(tokenizer, " cat"), compute.single_token_id(tokenizer, " dog")
    ids = compute.prompt_ids(tokenizer, "The bird is")  # neither swapped token in the input
    clean = compute.next_token_probs(model, ids)
    shared = model.get_output_embeddings().weight
    with compute.edited_embeddings(model, lambda w: compute.swap_rows(w, [(cat, dog)]), keep_output=True):
        kept = compute.next_token_probs(model, ids)
    with compute.edited_embeddings(model, lambda w: compute.swap_rows(w, [(cat, dog)])):
        tied = compute.next_token_probs(model, ids)
    assert model.get_output_embeddings().weight is shared and compute.embeddings_tied(model)
    torch.testing.assert_close(kept, clean, rtol=0, atol=0)
    assert float(tied[cat]) == pytest.approx(float(clean[dog]), rel=1e-5)
    assert float(tied[dog]) == pytest.approx(float(clean[cat]), rel=1e-5)


def test_injection_sgd_update_is_lr_times_gradient(planted_lm):
    """With SGD the step-1 update norm of every group is lr x its gradient norm; frozen groups stay 0."""
    from tasks.common.trainable import prepare_model

    model, tokenizer = planted_lm
    trained = prepare_model(model, "layers", trainable_layers=[0])
    steps, layers = compute.injection_run(trained, tokenizer, "The mouse is yellow.", "The mouse is", "yellow",
                                          lr=0.1, max_steps=3, optimizer="sgd", stop_when_learned=False)
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    first = [r for r in layers if r["step"] == 1]
    by_layer = {r["layer"]: r for r in first}
    assert by_layer[0]["update_norm"] == pytest.approx(0.1 * by_layer[0]["grad_norm"], rel=1e-5)
    assert by_layer[0]["grad_norm"] > 0
    for key in (1, None):
        assert by_layer[key]["grad_norm"] == 0 and by_layer[key]["update_norm"] == 0
        assert not by_layer[key]["trainable"]
    # the cumulative change after 3 steps is the norm of the summed updates (triangle inequality bound)
    last = next(r for r in layers if r["step"] == 3 and r["layer"] == 0)
    total = sum(r["update_norm"] for r in layers if r["layer"] == 0)
    assert 0 < last["weight_change_norm"] <= total + 1e-9
    # the loss logged at step s is the loss before its update: step 1's equals the step-0 loss
    assert steps[1]["loss"] == pytest.approx(steps[0]["loss"], rel=1e-6)
