"""Model names of the diversity family: built-in tiny "base" and "fine-tuned" pairs, then tasks.common.

The original compares Pythia base / SFT / DPO checkpoints from a hub. Offline, the family offers:

- `tiny-gpt2-pretrained` (and `tiny-llama-pretrained`): the common random tiny model trained for a few
  hundred steps on the common built-in corpus, a small "pretrained base" that writes varied text;
- `tiny-gpt2-narrow` (and `tiny-llama-narrow`): that base fine-tuned hard on one narrow text
  (`data.NARROW_TEXT`), the offline stand-in for a collapsed fine-tuned model.

Both are built on first use (seeded, a few seconds on CPU) and cached next to the common tiny models;
concurrent builders each write a temporary directory and rename it into place. Built-in names rather
than a training stage: every stage of a sweep can name them as plain model values, the orchestrator's
per-model setup cache keys on the name, and no stage has to hand a model artifact to the next.
Any other name goes to `tasks.common.models.load_causal_lm` (built-in tiny names, local dirs, hub ids).
"""

from __future__ import annotations

import os
from pathlib import Path

# Bump when the recipes below (or data.NARROW_TEXT) change: cached builds are keyed on it.
DIVERSITY_MODELS_VERSION = 1

# name -> (base model name, training text key, steps, learning rate)
RECIPES: dict[str, tuple[str, str, int, float]] = {}
for _arch in ("gpt2", "llama"):
    RECIPES[f"tiny-{_arch}-pretrained"] = (f"tiny-{_arch}", "corpus", 200, 5e-3)
    RECIPES[f"tiny-{_arch}-narrow"] = (f"tiny-{_arch}-pretrained", "narrow", 100, 5e-3)


def training_text(key: str) -> str:
    """The text a recipe trains on: "corpus" (the common tiny corpus), "narrow" (the family's narrow
    text, eight times) or the path of a .txt file."""
    if key == "corpus":
        from tasks.common.corpus import CORPUS

        return CORPUS
    if key == "narrow":
        from tasks.diversity.data import NARROW_TEXT

        return NARROW_TEXT * 8
    path = Path(key).expanduser()
    if path.suffix != ".txt" or not path.is_file():
        raise ValueError(f"text={key!r} is neither 'narrow', 'corpus' nor an existing .txt file")
    return path.read_text(encoding="utf-8")


def model_path(name: str) -> str:
    """A loadable name or path for `name`: the cached directory of a family built-in, else `name` itself."""
    if name not in RECIPES:
        return name
    from tasks.common.tiny import TINY_VERSION, cached_build

    base, text_key, steps, lr = RECIPES[name]
    return str(cached_build(f"{name}-t{TINY_VERSION}-d{DIVERSITY_MODELS_VERSION}",
                            lambda tmp: build_finetuned(base, training_text(text_key), tmp, steps=steps, lr=lr)))


def build_finetuned(base: str, text: str, path: str | os.PathLike, steps: int, lr: float = 3e-3, seed: int = 0) -> Path:
    """Load `base`, fine-tune all its weights on `text` (ops.finetune.finetune_on_text), save model and tokenizer
    to `path`."""
    import torch

    from tasks.common.models import load_causal_lm
    from tasks.diversity.ops.finetune import finetune_on_text

    model, tokenizer = load_causal_lm(model_path(base))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train several times faster on one thread (less contention)
    try:
        finetune_on_text(model, tokenizer, text, steps=steps, lr=lr, seed=seed)
    finally:
        torch.set_num_threads(threads)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_model(name: str, device: str = "cpu"):
    """(model, tokenizer) for a family built-in or any name `load_causal_lm` accepts; eval mode."""
    from tasks.common.models import load_causal_lm

    return load_causal_lm(model_path(name), device=device)


def context_length(model) -> int | None:
    """The model's maximum number of positions, if its config says."""
    config = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
