"""Built-in inputs of the probing family."""

from __future__ import annotations

DEFAULT_QUESTIONS = [
    "The cat is afraid of the",
    "The mouse is afraid of the",
    "The dog sat on the",
    "The cat sat on the",
    "My dog is called",
    "The lion is the king of the",
]
