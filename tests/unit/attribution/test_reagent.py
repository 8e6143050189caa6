"""ReAGent mechanics (stopping, no-convergence handling, batching) and the replacement samplers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tasks.attribution.ops.reagent import ReagentConfig, reagent
from tasks.attribution.ops.samplers import (
    InferentialSampler,
    TagGroupSampler,
    UniformSampler,
    coarse_tag,
    load_tag_map,
    make_sampler,
)
from tasks.common.lm import last_logits, last_logits_and_kv, right_pad

IDS = torch.tensor([40, 300, 57, 120, 9, 211, 33])


def _greedy(model, ids):
    return int(last_logits(model, torch.tensor([len(ids) - 1]), input_ids=ids[None]).argmax())


def test_short_prefix_stops_after_one_step(tiny_lm):
    # invariant: L <= keep_top_n replaces nothing in the stop check, so a greedy target stops every probe
    # after the first step (as in the original)
    model, tok = tiny_lm
    ids = IDS[:3]
    (r,) = reagent(model, [ids], [_greedy(model, ids)], UniformSampler(tok), ReagentConfig(keep_top_n=3, num_probes=4))
    assert r.n_steps == 1 and r.n_converged == 4
    assert r.rationale == [0, 1, 2]


def test_unreachable_tolerance_runs_max_steps(tiny_lm):
    # invariant: top-0 is never hit: max_steps probe steps, converged False, mean of all probes by
    # default, NaN with on_no_convergence="nan" (the original's 0/0)
    model, tok = tiny_lm
    cfg = ReagentConfig(stop_top_k=0, max_steps=7, num_probes=3)
    (r,) = reagent(model, [IDS], [5], UniformSampler(tok), cfg)
    assert r.n_steps == 7 and r.n_converged == 0
    torch.testing.assert_close(r.scores, r.probe_scores.mean(0))
    (nan,) = reagent(model, [IDS], [5], UniformSampler(tok), ReagentConfig(stop_top_k=0, max_steps=7,
                                                                          on_no_convergence="nan"))
    assert torch.isnan(nan.scores).all()


def test_batched_targets_match_shapes_and_are_seeded(tiny_lm):
    # invariant: several targets of different lengths in one call; same seed -> same scores
    model, tok = tiny_lm
    prefixes = [IDS, IDS[:4], IDS[2:]]
    cfg = ReagentConfig(max_steps=30, num_probes=3, keep_top_n=2)
    a = reagent(model, prefixes, [5, 6, 7], UniformSampler(tok), cfg, torch.Generator().manual_seed(1))
    b = reagent(model, prefixes, [5, 6, 7], UniformSampler(tok), cfg, torch.Generator().manual_seed(1))
    for ra, rb, p in zip(a, b, prefixes, strict=True):
        assert ra.scores.shape == (len(p),) and ra.probe_scores.shape == (3, len(p))
        torch.testing.assert_close(ra.scores, rb.scores)


def test_right_padding_does_not_change_last_logits(tiny_lm):
    # invariant: a causal LM's logits at a row's last real position ignore the padding after it
    model, _ = tiny_lm
    alone = last_logits(model, torch.tensor([3]), input_ids=IDS[None, :4])
    ids, lengths = right_pad([IDS[:4], IDS])
    padded = last_logits(model, lengths - 1, input_ids=ids)
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


def test_uniform_sampler_excludes_specials(tiny_lm):
    # invariant: uniform draws never return bos / eos / unk / pad, and cover many ids
    _, tok = tiny_lm
    draw = UniformSampler(tok).bind(IDS[None].repeat(50, 1))
    out = draw(torch.arange(50), torch.Generator().manual_seed(0))
    specials = {tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id}
    assert out.shape == (50, len(IDS))
    assert not any(int(i) in specials for i in out.flatten())
    assert len(set(out.flatten().tolist())) > 100


def test_tag_sampler_stays_within_the_tag():
    # invariant: a replacement shares the replaced id's tag; untagged ids form their own group
    tag_map = {"A": [0, 1, 2], "B": [3, 4]}
    sampler = TagGroupSampler(tag_map, vocab_size=7)
    ids = torch.tensor([[0, 3, 5, 6]]).repeat(200, 1)
    out = sampler.bind(ids)(torch.arange(200), torch.Generator().manual_seed(0))
    assert set(out[:, 0].tolist()) == {0, 1, 2}
    assert set(out[:, 1].tolist()) == {3, 4}
    assert set(out[:, 2:].flatten().tolist()) <= {5, 6}


def test_coarse_tags():
    # invariant: surface classes separate word starts, continuations, case, digits and punctuation
    assert coarse_tag(" Paris") == "start-cap"
    assert coarse_tag(" the") == "start-lower"
    assert coarse_tag("ing") == "cont-lower"
    assert coarse_tag(" 42") == "digit"
    assert coarse_tag(").") == "punct"
    assert coarse_tag(" ") == "space"


def test_tag_map_from_file_and_cache(tiny_lm, tmp_path):
    # invariant: a JSON tag map is used as given; the coarse map covers every id and is cached
    _, tok = tiny_lm
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"X": [1, 2], "Y": [3]}))
    tag_map, used = load_tag_map(tok, path=str(path))
    assert tag_map == {"X": [1, 2], "Y": [3]} and used == "file:map.json"
    coarse, used = load_tag_map(tok, tagger="coarse")
    assert used == "coarse" and sorted(i for ids in coarse.values() for i in ids) == list(range(len(tok)))
    again, _ = load_tag_map(tok, tagger="coarse")
    assert again == coarse
    _sampler, label = make_sampler("pos", None, tok, pos_tagger="auto")
    assert label in ("pos:coarse", "pos:nltk")


def test_inferential_sampler_uses_the_models_predictions(tiny_lm):
    # invariant: position i gets argmax f(x_<i); position 0 keeps its token
    model, _ = tiny_lm
    out = InferentialSampler(model).bind(IDS[None])(torch.tensor([0]), torch.Generator())
    assert int(out[0, 0]) == int(IDS[0])
    assert int(out[0, 3]) == _greedy(model, IDS[:3])


def test_config_rejects_bad_settings():
    # invariant: invalid settings fail at construction, naming the field
    with pytest.raises(ValueError, match="replace_ratio"):
        ReagentConfig(replace_ratio=1.5)
    with pytest.raises(ValueError, match="on_no_convergence"):
        ReagentConfig(on_no_convergence="zero")


def test_pass_plan():
    # invariant: passes split only when the padding saved exceeds the per-pass overhead; every row once
    from tasks.attribution.ops.reagent import _plan_passes

    def plan(starts, ends, overhead):
        passes = _plan_passes(np.array(starts), np.array(ends), overhead)
        assert sorted(np.concatenate(passes).tolist()) == list(range(len(starts)))
        return [sorted(p.tolist()) for p in passes]

    starts, ends = [0] * 20, [5] * 10 + [30] * 10
    assert plan(starts, ends, 0) == [list(range(10)), list(range(10, 20))]  # no overhead: never pad
    assert plan(starts, ends, 10_000) == [list(range(20))]  # huge overhead: one pass
    assert plan([0, 0, 0], [5, 6, 30], 2) == [[0, 1], [2]]
    assert plan([0, 8, 9], [10, 10, 10], 3) == [[0], [1, 2]]  # late starts run apart from early ones


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_continued_logits_equal_full_logits(arch, tiny_lm, tiny_llama):
    # invariant: continuing rows from the clean prefix's keys and values (from any start, in any passes)
    # gives the logits of a full forward; unchanged rows get the clean logits
    from tasks.attribution.ops.reagent import _continued_last_logits

    model, _ = tiny_lm if arch == "gpt2" else tiny_llama
    clean, lengths = right_pad([IDS, IDS[:4]])
    clean_logits, clean_kv = last_logits_and_kv(model, lengths - 1, input_ids=clean)
    prefix = torch.tensor([0, 0, 0, 1, 1, 0])
    starts = torch.tensor([0, 3, 6, 2, 4, 7])  # the last two change nothing
    ids = clean[prefix].clone()
    for r, s in enumerate(starts.tolist()):
        if s < lengths[prefix[r]]:
            ids[r, s:] = (ids[r, s:] + 11 * (r + 1)) % 200
    ends = lengths[prefix]
    full = last_logits(model, ends - 1, input_ids=ids)
    for overhead in (0, 1000):
        ours = _continued_last_logits(model, ids, prefix, starts, ends, clean_logits, clean_kv, overhead)
        torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["uniform", "pos"])
def test_prefix_reuse_keeps_results_on_identical_draws(sampler, tiny_lm):
    # invariant: with the same seed, reusing the clean prefix's keys and values changes no result:
    # the same random draws, steps, stopped probes and rationale, scores equal to float rounding
    model, tok = tiny_lm
    sampler_obj = make_sampler(sampler, model, tok, pos_tagger="coarse")[0]
    prefixes = [IDS, IDS[:4], IDS[2:], torch.cat([IDS, IDS])]
    targets = [5, 6, 7, 8]
    for cfg in (ReagentConfig(max_steps=40, num_probes=4, keep_top_n=2, stop_top_k=20, replace_ratio=0.2),
                ReagentConfig(max_steps=15, num_probes=3, keep_top_n=3, stop_top_k=0)):
        plain = reagent(model, prefixes, targets, sampler_obj, replace(cfg, reuse_clean_prefix=False),
                        torch.Generator().manual_seed(3))
        reused = reagent(model, prefixes, targets, sampler_obj, cfg, torch.Generator().manual_seed(3))
        for a, b in zip(plain, reused, strict=True):
            assert (a.n_steps, a.n_converged, a.rationale) == (b.n_steps, b.n_converged, b.rationale)
            torch.testing.assert_close(a.probe_scores, b.probe_scores, rtol=1e-5, atol=1e-6)
