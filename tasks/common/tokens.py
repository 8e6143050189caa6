"""Where the subject sits in a tokenized prompt (causal tracing and ROME's "subject_last" token)."""

from __future__ import annotations


def subject_token_range(tokenizer, text: str, subject: str) -> tuple[int, int]:
    """Token indices [start, end) of tokenizer(text)["input_ids"] that overlap the subject's first occurrence.

    As causal_trace.find_token_range (tokens whose characters overlap the subject), using the fast
    tokenizer's offsets; without offsets, the lengths of the tokenized text up to the subject's start and
    end (ROME's repr_tools approach).
    """
    begin = text.find(subject)
    if begin < 0 or not subject:
        raise ValueError(f"subject {subject!r} does not occur in {text!r}")
    end = begin + len(subject)
    try:
        encoded = tokenizer(text, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        offsets = None
    if offsets is not None:
        hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > begin]
        if hits:
            return hits[0], hits[-1] + 1
    start_ids = tokenizer(text[:begin])["input_ids"]
    end_ids = tokenizer(text[:end])["input_ids"]
    n_special = len(tokenizer("")["input_ids"]) if begin == 0 else 0
    start = len(start_ids) if begin > 0 else n_special
    if len(end_ids) <= start:
        raise ValueError(f"cannot locate subject {subject!r} in the tokens of {text!r}")
    return start, len(end_ids)


def subject_last_index(tokenizer, text: str, subject: str) -> int:
    """Index of the subject's last token in tokenizer(text)["input_ids"]."""
    return subject_token_range(tokenizer, text, subject)[1] - 1
