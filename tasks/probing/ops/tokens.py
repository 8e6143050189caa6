"""Tokenisation variants: in byte-level BPE " dog" and "dog" are different tokens, so every probe says
which variant it touches (`variant_text`, `single_token_id`, `token_pieces`, `prompt_ids`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

VARIANTS: dict[str, Callable[[str], str]] = {
    "space_lower": lambda w: " " + w.lower(),
    "bare_lower": lambda w: w.lower(),
    "space_cap": lambda w: " " + w[:1].upper() + w[1:].lower(),
    "bare_cap": lambda w: w[:1].upper() + w[1:].lower(),
    "space_upper": lambda w: " " + w.upper(),
    "bare_upper": lambda w: w.upper(),
}


def variant_text(word: str, variant: str) -> str:
    """The surface form of `word` in a tokenisation variant ("space_lower" -> " cat", "bare_cap" -> "Cat")."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got variant={variant!r}")
    return VARIANTS[variant](word.strip())


def encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when it is exactly one token (no special tokens), else None."""
    ids = encode(tokenizer, text)
    return int(ids[0]) if len(ids) == 1 else None


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (the detokenisation check: which BPE pieces a word is)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """A prompt's ids with the tokenizer's default special tokens; BOS (or EOS) alone if it is empty."""
    ids = encode(tokenizer, text, special=True)
    if not ids:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [int(bos)]
    return ids
