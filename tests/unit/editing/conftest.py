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
def tiny_lm():
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
    model.eval()
    return model, tokenizer
