"""Tiny models for the editing tests, built (and where needed trained) once per session on CPU.

- `tiny_lm`: a 2-layer GPT-2 (d=64) with a byte-level BPE tokenizer trained on the built-in texts, then
  briefly pre-trained on the built-in general text so its losses are those of a (weak) language model.
- `planted`: a 4-layer word-level GPT-2 that stores 48 facts "<first> <last> lives in" -> " <city>" in the
  MLP of layer PLANTED_LAYER at the subject's last token, by construction (see `_build_planted`).
"""

from __future__ import annotations

import random

import pytest
import torch

from tasks.editing.data import BUILTIN_FACTS, BUILTIN_GENERAL_TEXT

PLANTED_LAYER = 1


def _fast_tokenizer(tokenizer_object, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **special)


def _bpe_tokenizer(corpus: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return _fast_tokenizer(tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _fact_texts() -> list[str]:
    texts = []
    for f in BUILTIN_FACTS:
        texts += [f"{f.text()} {f.target_true}.", f.paraphrase.format(f.subject) + f" {f.target_true}."]
        texts += [f"{p} {f.target_true}." for p in f.neighborhood]
    return texts


@pytest.fixture(scope="session")
def tiny_lm(_one_torch_thread):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer(list(BUILTIN_GENERAL_TEXT) * 3 + _fact_texts() * 3)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=2, n_embd=64, n_head=2, n_positions=128,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    # brief pre-training on general text (not on the facts): a weak LM whose degradation is measurable
    ids = [tokenizer(t)["input_ids"] for t in BUILTIN_GENERAL_TEXT]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        batch = random.Random(_).sample(ids, 8)
        width = max(map(len, batch))
        x = torch.tensor([s + [0] * (width - len(s)) for s in batch])
        labels = torch.tensor([s + [-100] * (width - len(s)) for s in batch])
        loss = model(input_ids=x, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, tokenizer


class Planted:
    """The planted-fact model and what the tests need to know about it."""

    def __init__(self, model, tokenizer, facts, layer, filler):
        self.model, self.tokenizer, self.facts, self.layer, self.filler = model, tokenizer, facts, layer, filler

    def prompt(self, subject: str) -> str:
        return f"{subject} lives in"


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<|endoftext|>", "[UNK]", *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation
    return _fast_tokenizer(tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="[UNK]")


@pytest.fixture(scope="session")
def planted(_one_torch_thread):
    """A 4-layer GPT-2 (d=64) whose facts "<first> <last> lives in" -> " <city>" live in MLP PLANTED_LAYER
    at the subject's last token, by construction:
    - layers 0..PLANTED_LAYER have their attention output projection zeroed (frozen): no information moves
      between positions there, so the last token cannot see the subject before layer PLANTED_LAYER + 1,
      and MLP PLANTED_LAYER at the last subject token sees that token alone;
    - the last names are unique per subject, first names are shared (4 of them) and carry no answer;
    - layers after PLANTED_LAYER have attention with a frozen identity value/output map (only queries and
      keys train): they can move information to the last token but cannot store a subject -> city map;
    - embeddings (std 0.1, so the trained MLP output dominates its residual), the untied unembedding,
      layer norms and every other MLP are frozen (random);
    so the only trainable map from subject to city is MLP PLANTED_LAYER at the subject's last token.
    Half of the training prompts get a random filler prefix, so the facts hold at shifted positions
    (ROME's context templates). Trained to >= 99% accuracy in 200 full-batch steps.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    rng = random.Random(0)
    first = ["ann", "bob", "cy", "dee"]
    last = [f"n{i}" for i in range(48)]
    cities = [f"c{i}" for i in range(8)]
    filler = ["the", "a", "and", "of", "to", "was", "he", "she", "it", "on", "at", "by"]
    tokenizer = _word_tokenizer(first + last + cities + filler + [".", "lives", "in", "is"])
    facts = [(f"{rng.choice(first)} {name}", rng.choice(cities)) for name in last]

    torch.manual_seed(0)
    d, n_layers, layer = 64, 4, PLANTED_LAYER
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=n_layers, n_embd=d, n_head=2, n_positions=32,
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    hooks = []
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0, 0.1)
        model.lm_head.weight.normal_(0, 1.0)
        for p in model.parameters():
            p.requires_grad_(False)
        for i in range(layer + 1):
            model.transformer.h[i].attn.c_proj.weight.zero_()
            model.transformer.h[i].attn.c_proj.bias.zero_()
        for i in range(layer + 1, n_layers):
            attn = model.transformer.h[i].attn
            attn.c_attn.weight[:, 2 * d :] = torch.eye(d)
            attn.c_attn.bias[2 * d :] = 0
            attn.c_proj.weight.copy_(torch.eye(d))
            attn.c_proj.bias.zero_()
            attn.c_attn.weight.requires_grad_(True)
            attn.c_attn.bias.requires_grad_(True)
            keep_w = torch.ones_like(attn.c_attn.weight)
            keep_w[:, 2 * d :] = 0
            keep_b = torch.ones_like(attn.c_attn.bias)
            keep_b[2 * d :] = 0
            hooks.append(attn.c_attn.weight.register_hook(lambda g, k=keep_w: g * k))
            hooks.append(attn.c_attn.bias.register_hook(lambda g, k=keep_b: g * k))
        for p in model.transformer.h[layer].mlp.parameters():
            p.requires_grad_(True)

    vocab = tokenizer.get_vocab()

    def batch(prefix_prob: float):
        seqs, answers = [], []
        for subject, city in facts:
            prefix = ""
            if rng.random() < prefix_prob:
                prefix = " ".join(rng.choice(filler) for _ in range(rng.randint(1, 6))) + " . "
            seqs.append(tokenizer(prefix + f"{subject} lives in")["input_ids"])
            answers.append(vocab[city])
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, torch.tensor([len(s) - 1 for s in seqs]), torch.tensor(answers)

    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / 200)
    for _ in range(200):
        ids, last_pos, answers = batch(0.5)
        logits = model(input_ids=ids).logits[torch.arange(len(answers)), last_pos]
        loss = torch.nn.functional.cross_entropy(logits, answers)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    for h in hooks:
        h.remove()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)  # as a loaded model: the tasks must not rely on frozen parameters
    with torch.no_grad():
        ids, last_pos, answers = batch(0.0)
        accuracy = (model(input_ids=ids).logits[torch.arange(len(answers)), last_pos].argmax(-1)
                    == answers).float().mean()
    assert accuracy >= 0.99, f"planted model only reached accuracy {accuracy:.2f}"
    return Planted(model, tokenizer, facts, layer, filler)


@pytest.fixture(scope="session")
def planted_trace(planted):
    """editing.causal_trace rows of the first 8 planted facts: all sites, window 1, 10 noise samples."""
    from orchestrator.context import local_context
    from tasks.editing.task import CausalTraceParams, TraceFact, causal_trace

    facts = [TraceFact(prompt="{} lives in", subject=s, target=c) for s, c in planted.facts[:8]]
    ctx = local_context(seed=0)
    ctx.setup = (planted.model, planted.tokenizer)
    return causal_trace(CausalTraceParams(model="planted", facts=facts, window=1, samples=10), ctx)
