"""Model names of the editing family: a built-in tiny model that knows the built-in facts, then tasks.common.

ROME and causal tracing need a model that knows facts; offline there is none. The family offers
- `tiny-gpt2-facts` (and `tiny-llama-facts`): a 4-layer, 64-wide tiny model (the common tiny builder,
  tokenizer trained on the common corpus plus the fact statements) trained line by line on the common
  corpus and on every statement of `data.BUILTIN_FACTS` (canonical prompt, paraphrase and neighbourhood
  prompts with their true objects), so it completes the built-in facts (all 32 prompts, greedy);
- `tiny-gpt2-corpus` (and `tiny-llama-corpus`): the same recipe without the fact statements, a weak LM
  that does not know the built-in facts: the offline model to teach them with canonical examples.
- `tiny-backpack`: a tiny Backpack (tasks.editing.ops.backpack; 4 layers, d 64, 4 senses) with the same
  tokenizer, trained on the common corpus only (like tiny-gpt2-corpus): the offline model for sense
  fine-tuning; it shares its tokenizer with tiny-gpt2-corpus / tiny-gpt2-facts, so those can play the
  larger model of the ensemble.
Backpack checkpoints (`stanfordnlp/backpack-gpt2`, or a local directory whose config has num_senses)
load through backpack.load_backpack.
Built on first use (seeded, ~10-30 s on one CPU core) and cached next to the common tiny models;
concurrent builders each write a temporary directory and rename it into place. Any other name goes to
`tasks.common.models.load_causal_lm` (built-in tiny names, local dirs, hub ids).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

# Bump when the recipe below (or data.BUILTIN_FACTS) changes: cached builds are keyed on it.
EDITING_MODELS_VERSION = 1

# name -> (arch, training steps, learning rate, train on the fact statements)
RECIPES: dict[str, tuple[str, int, float, bool]] = {
    "tiny-gpt2-facts": ("gpt2", 600, 3e-3, True),
    "tiny-llama-facts": ("llama", 600, 3e-3, True),
    "tiny-gpt2-corpus": ("gpt2", 600, 3e-3, False),
    "tiny-llama-corpus": ("llama", 600, 3e-3, False),
    "tiny-backpack": ("backpack", 600, 3e-3, False),
}
LAYERS = 4


def fact_lines() -> list[str]:
    """Every statement about the built-in facts the model is trained on (true objects)."""
    from tasks.editing.data import BUILTIN_FACTS

    lines = []
    for fact in BUILTIN_FACTS:
        lines.append(f"{fact.text()} {fact.target_true}.")
        lines.append(f"{fact.paraphrase.format(fact.subject)} {fact.target_true}.")
        lines += [f"{prompt} {fact.target_true}." for prompt in fact.neighborhood]
    return lines


def model_path(name: str) -> str:
    """A loadable name or path for `name`: the cached directory of a family built-in, else `name` itself."""
    if name not in RECIPES:
        return name
    from tasks.common.tiny import TINY_VERSION, cached_build

    return str(cached_build(f"{name}-t{TINY_VERSION}-e{EDITING_MODELS_VERSION}",
                            lambda tmp: build_facts_model(tmp, *RECIPES[name])))


def build_facts_model(
    path: str | os.PathLike, arch: str, steps: int, lr: float, with_facts: bool = True, seed: int = 0
) -> Path:
    """Build a 4-layer tiny model, train it on the common corpus (and the fact statements); save to `path`.

    The tokenizer is trained on the corpus plus the fact statements in both variants, so the two models
    tokenize the facts alike.
    """
    import torch

    from tasks.common.corpus import corpus_lines
    from tasks.common.models import load_causal_lm
    from tasks.common.tiny import build_tiny_causal_lm

    facts = fact_lines()
    corpus = corpus_lines()
    backpack = arch == "backpack"
    layers = {"n_layer": LAYERS} if arch in ("gpt2", "backpack") else {"num_hidden_layers": LAYERS}
    build_tiny_causal_lm(path, arch="gpt2" if backpack else arch, corpus=corpus + facts, seed=seed, **layers)
    model, tokenizer = load_causal_lm(path)
    if backpack:  # same tokenizer and size, Backpack architecture
        from tasks.editing.ops.backpack import build_tiny_backpack

        cfg = model.config
        model = build_tiny_backpack(cfg.vocab_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                    num_senses=4, n_positions=cfg.n_positions, seed=seed,
                                    bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    lines = corpus + facts * 4 if with_facts else corpus  # facts oversampled so that every one is learned
    encoded = [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
    rng = random.Random(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train several times faster on one thread
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / steps)
            model.eval()  # no dropout: memorise
            for _ in range(steps):
                batch = rng.sample(encoded, 16)
                width = max(map(len, batch))
                ids = torch.tensor([s + [0] * (width - len(s)) for s in batch])
                labels = torch.tensor([s + [-100] * (width - len(s)) for s in batch])
                mask = (labels != -100).long()
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    path = Path(path)
    if backpack:
        from tasks.editing.ops.backpack import save_backpack

        for stale in path.glob("*.safetensors"):
            stale.unlink()
        save_backpack(model, path, tokenizer)
        return path
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_model(name: str, device: str = "cpu"):
    """(model, tokenizer) for a family built-in or any name `load_causal_lm` accepts; eval mode."""
    from tasks.common.models import load_causal_lm
    from tasks.editing.ops import backpack

    path = model_path(name)
    if path in backpack.HUB_NAMES or backpack.is_backpack_dir(path):
        return backpack.load_backpack(path, device=device)
    return load_causal_lm(path, device=device)
