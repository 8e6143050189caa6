"""Replacement-token samplers for ReAGent (Zhao and Shan 2024, casszhao/ReAGent token_sampler/*.py).

A sampler is bound once to the clean prefixes of one ReAGent call (`bind(ids)`), then drawn from at
every probe step for any subset of rows: `bound(rows, generator) -> replacement ids` of shape
(len(rows), seq). Positions are replaced by the caller only where its replacement mask says so.

- `UniformSampler`: uniform over the vocabulary minus the bos/eos/unk (and pad) ids (original "uniform").
- `TagGroupSampler`: uniform over the ids sharing the tag of the current id (original "postag"). The
  tag map (tag -> ids) is pluggable: NLTK's default tagger on each decoded id (what the original ran;
  needs nltk and its 'averaged_perceptron_tagger(_eng)' data), a JSON file, or `coarse_tag` (a
  POS-free surface class: word-start vs continuation, capitalised / lower / digit / punctuation /
  space), used where the NLTK data cannot be had. Maps are cached as JSON (never pickle).
- `InferentialSampler`: position i gets the model's own argmax prediction from x_<i, position 0 kept
  (original "inferential"; deterministic given the prefix).
The paper's "RoBERTa predictions" / the repo's "inferential-m" (a second model) is not implemented.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

Bound = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (rows,) -> (rows, seq) ids


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


class UniformSampler:
    """Uniform over the vocabulary without bos / eos / unk (casszhao/ReAGent UniformTokenSampler) and pad
    (which GPT-2 did not have; a drawn pad token is not text)."""

    name = "uniform"

    def __init__(self, tokenizer: Any, device: str | torch.device = "cpu") -> None:
        vocab = len(tokenizer)
        excluded = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
                    tokenizer.pad_token_id} - {None}
        keep = torch.ones(vocab, dtype=torch.bool)
        keep[list(excluded)] = False
        self.available = torch.arange(vocab)[keep].to(device)  # (n_available,)

    def bind(self, ids: torch.Tensor) -> Bound:
        available = self.available.to(ids.device)

        def draw(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            u = _uniform((len(rows), ids.shape[1]), generator, ids.device)
            return available[(u * len(available)).long().clamp_max(len(available) - 1)]

        return draw


class TagGroupSampler:
    """Uniform over the ids that share the current id's tag (casszhao/ReAGent POSTagTokenSampler).

    `tag_of_id[i]` is the tag of id i for every id in [0, len(tokenizer)) (the original covered only
    [0, vocab_size) and failed on added tokens). A token may be replaced by itself, as in the original.
    """

    name = "pos"

    def __init__(self, tag_map: dict[str, list[int]], vocab_size: int, device: str | torch.device = "cpu") -> None:
        tags = sorted(tag_map)
        groups = [torch.tensor(sorted(tag_map[t]), dtype=torch.long) for t in tags]
        group_of = torch.full((vocab_size,), -1, dtype=torch.long)
        for g, ids in enumerate(groups):
            group_of[ids] = g
        missing = (group_of < 0).nonzero().flatten()
        if len(missing):  # ids absent from the map form their own group ("<untagged>")
            groups.append(missing)
            group_of[missing] = len(groups) - 1
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.long)
        self.group_of = group_of.to(device)  # (vocab,)
        self.sizes = sizes.to(device)  # (n_groups,)
        self.offsets = (torch.cumsum(sizes, 0) - sizes).to(device)  # (n_groups,)
        self.compact = torch.cat(groups).to(device)  # (vocab,) ids grouped by tag

    def bind(self, ids: torch.Tensor) -> Bound:
        group = self.group_of.to(ids.device)[ids]  # (N, seq)
        sizes, offsets, compact = (t.to(ids.device) for t in (self.sizes, self.offsets, self.compact))

        def draw(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            g = group[rows]
            u = _uniform(g.shape, generator, ids.device)
            pick = (u * sizes[g]).long().clamp_max(sizes[g] - 1)
            return compact[offsets[g] + pick]

        return draw


class InferentialSampler:
    """Position i gets the model's argmax next token given x_<i; position 0 is kept (original "inferential")."""

    name = "inferential"

    def __init__(self, model: Any) -> None:
        self.model = model

    @torch.inference_mode()
    def bind(self, ids: torch.Tensor) -> Bound:
        logits = self.model(input_ids=ids).logits  # (N, seq, vocab); padded tails never read
        predicted = torch.cat([ids[:, :1], logits[:, :-1].argmax(-1)], dim=1)  # (N, seq)

        def draw(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return predicted[rows]

        return draw


# ---------------------------------------------------------------------------------------------- tag maps

_PUNCT = set(string.punctuation)


def coarse_tag(text: str) -> str:
    """A POS-free surface class of one decoded token: word start or continuation x letter case / digit / punct."""
    stripped = text.strip()
    start = "start" if text[:1].isspace() or text.startswith(("Ġ", "▁")) else "cont"
    if not stripped:
        return "space"
    if all(c in _PUNCT for c in stripped):
        return "punct"
    if stripped.isdigit():
        return "digit"
    if stripped.isalpha():
        if stripped.isupper() and len(stripped) > 1:
            return f"{start}-upper"
        return f"{start}-{'cap' if stripped[0].isupper() else 'lower'}"
    return f"{start}-other"


def nltk_tagger() -> Callable[[str], str] | None:
    """NLTK's default perceptron tagger on one stripped word, or None when nltk or its data is missing."""
    try:
        import nltk

        nltk.pos_tag(["test"])
    except Exception:  # ImportError, or LookupError for the tagger data (cannot be downloaded offline)
        return None
    return lambda text: nltk.pos_tag([text.strip()])[0][1]


def build_tag_map(tokenizer: Any, tagger: Callable[[str], str]) -> dict[str, list[int]]:
    """tag -> ids for every id of the tokenizer (each id decoded alone, as the original did)."""
    tag_map: dict[str, list[int]] = {}
    for i in range(len(tokenizer)):
        tag_map.setdefault(tagger(tokenizer.decode([i])), []).append(i)
    return tag_map


def _cache_dir() -> Path:
    root = os.environ.get("INTERP_SWEEPS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "interp-sweeps")
    return Path(root) / "pos_tag_maps"


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def load_tag_map(tokenizer: Any, tagger: str = "auto", path: str | None = None) -> tuple[dict[str, list[int]], str]:
    """Tag map and the tagger actually used: a JSON file, or NLTK / coarse tagging cached as JSON.

    tagger: "nltk" (fails without nltk data), "coarse", or "auto" (nltk when usable, else coarse; the
    returned name says which, so rows can record it).
    """
    if path is not None:
        with open(path) as f:
            return {str(k): [int(i) for i in v] for k, v in json.load(f).items()}, f"file:{Path(path).name}"
    fn = nltk_tagger() if tagger in ("auto", "nltk") else None
    if tagger == "nltk" and fn is None:
        raise RuntimeError(
            "pos_tagger='nltk' needs nltk and its 'averaged_perceptron_tagger_eng' data; neither can be "
            "downloaded offline: pass pos_tag_map=<json of tag -> ids>, or pos_tagger='coarse'"
        )
    used = "nltk" if fn is not None else "coarse"
    fn = fn or coarse_tag
    cache = _cache_dir() / f"{used}-{_tokenizer_fingerprint(tokenizer)}.json"
    if cache.exists():
        with open(cache) as f:
            return {k: [int(i) for i in v] for k, v in json.load(f).items()}, used
    tag_map = build_tag_map(tokenizer, fn)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(tag_map))
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only home is not an error
        logger.warning("could not cache the tag map at %s: %s", cache, exc)
    return tag_map, used


def make_sampler(
    kind: str,
    model: Any,
    tokenizer: Any,
    pos_tagger: str = "auto",
    pos_tag_map: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Any, str]:
    """A sampler by name ("uniform", "pos", "inferential") and a label of what it used."""
    if kind == "uniform":
        return UniformSampler(tokenizer, device), "uniform"
    if kind == "pos":
        tag_map, used = load_tag_map(tokenizer, pos_tagger, pos_tag_map)
        return TagGroupSampler(tag_map, len(tokenizer), device), f"pos:{used}"
    if kind == "inferential":
        return InferentialSampler(model), "inferential"
    raise ValueError(f"sampler must be one of uniform, pos, inferential; got sampler={kind!r}")
