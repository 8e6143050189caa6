"""Inputs of the ReAGent experiments: analogy prompts (token level) and text prompts (sequence level).

Analogies (casszhao/ReAGent src/data/prepare_evaluation_analogy.py and data_utils.py, templates from
keyonvafa/sequential-rationales), from a file in the Google analogy test-set format
(questions-words.txt: ": category" headers, then "a b c d" lines):
  1. parse: join the lines with spaces, split on ':'; per category, consecutive words form pairs
     (each question gives (a, b) and (c, d)); unique pairs in first-seen order;
  2. single-token filter (`single_token_rule`): "space_prefixed" (default) keeps pairs whose words,
     space-prefixed, are one token each; "original" is the original's name test ("gpt2" in the tokenizer
     name: " " + w is 1 id; otherwise w without space is 2 ids incl. specials, which for GPT-J keeps
     two-piece words); "none" keeps every pair (tiny models);
  3. currency patch: "euro" -> "Euro", "won" -> "Won" (`currency_patch="by_value"`, default); the
     original overwrote positions 4 and 6 of the filtered list ("by_index"), whatever word sat there;
  4. sentence = template with [A]/[B] filled; target = the later placeholder (the last word);
  5. keep the pair only if greedy decoding predicts the last token both with and without the
     distractor (tokens from the first " (" through the first ")."), judged on the last
     space-separated word of the decoded sequence (`require_correct`, default True as the original;
     False for untrained tiny models);
  6. attribution input = the tokens before the target, target = the target's (last) token. The
     original took the FIRST occurrence of the target's last piece (`target_position="first_occurrence"`);
     the default is the sentence's last token (they differ only when the word occurs earlier).
A JSONL of already prepared inputs (the original's, ../data/reagent/analogies_prepared/*.jsonl, with
input_tokens / target_token) is read as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TEMPLATES: dict[str, str] = {
    "capital-common-countries": (
        "When my flight landed in [B], I converted my currency and slowly fell asleep. (I had a terrifying dream about "
        "my grandmother, but that's a story for another time). I was staying in the capital, [A]"
    ),
    "capital-world": (
        "When my flight landed in [B], I converted my currency and slowly fell asleep. (I was behind on a couple of "
        "assignments, but I tried not to think about them). I was staying in the capital, [A]"
    ),
    "currency": (
        "As soon as I arrived in [A], I checked into my hotel and took a long nap. (I had finally finished the book I "
        "was reading and it was amazing). I had to figure out the exchange rate to the local currency, which is "
        "apparently called the [B]"
    ),
    "city-in-state": (
        "As soon as I arrived in [B], I checked into my hotel and watched a movie before falling asleep. (I had a "
        "great call with my husband, although I wish it were longer). I was staying in my favorite city, [A]"
    ),
    "family": (
        "I initially invited my [A], who gladly accepted my invitation. (My favorite song just came on, so I was able "
        "to relax). When I learned that women were allowed, I went ahead and also invited my [B]"
    ),
    "gram1-adjective-to-adverb": (
        "How could he do this so [B]? (I wasn't sure why my phone always rang at the most inopportune times). When I "
        "tried to do it, I could never be [A]"
    ),
    "gram2-opposite": (
        "I thought it was [A]. (Just then an ad came on the TV, but that's irrelevant). It was the opposite of that: "
        "it was [B]"
    ),
    "gram3-comparative": (
        "I knew it was [A], but that's before I saw it in person. (Just then I thought about my ex-wife, but I had to "
        "stop thinking about her). When I did end up seeing it in person, it was even [B]"
    ),
    "gram4-superlative": (
        "I thought it would be the [B] thing I'd ever encounter. (I tried to ignore my phone vibrating in my pocket). "
        "But when I did end up encountering it, it turned out it wasn't so [A]"
    ),
    "gram5-present-participle": (
        "Every other day, it started [B] in the morning. (I tried to remember the name of the woman at the bar). But "
        "today, it did not [A]"
    ),
    "gram6-nationality-adjective": (
        "I had never been friends with any [B] people before. (The funniest thing happened to me the other day, but "
        "that's a story for another time). In fact, I had never even been to [A]"
    ),
    "gram7-past-tense": (
        "Although I [B] yesterday, I had a million things to do today. (I suddenly felt a pinched nerve, so I made a "
        "mental note to get that checked out). So today I wouldn't have time to do any more [A]"
    ),
    "gram8-plural": (
        "I really wanted to buy the [A], more than I ever wanted to buy anything before. (I was also behind on my "
        "homework, but that's another story). So I went to the store and asked if they had any [B]"
    ),
    "gram9-plural-verbs": (
        "I can usually [A] by myself. (I was so behind on work but I tried to distract myself). Although it's so much "
        "better when someone else also [B]"
    ),
}

# A few facts in the test-set format, for offline runs (words from questions-words.txt).
BUILTIN_ANALOGIES = """\
: capital-common-countries
Athens Greece Baghdad Iraq
Berlin Germany Cairo Egypt
London England Madrid Spain
Paris France Rome Italy
: currency
Japan yen Europe euro
Korea won Mexico peso
: family
boy girl brother sister
father mother king queen
: gram3-comparative
big bigger cold colder
good better great greater
: gram2-opposite
acceptable unacceptable aware unaware
certain uncertain clear unclear
: gram6-nationality-adjective
France French Germany German
: gram9-plural-verbs
decrease decreases describe describes
eat eats enhance enhances
"""

BUILTIN_PROMPTS = [
    "Super Mario Land is a game that developed by",
    "The capital of France is",
    "When my flight landed in Japan, I converted my currency and slowly fell asleep.",
    "Return a new list of the",
]


@dataclass(frozen=True)
class AnalogyExample:
    id: int
    category: str
    analogy_idx: int
    pair_idx: int
    text: str  # the full sentence, target included
    prefix: tuple[int, ...]  # ids before the target
    target: int
    target_text: str
    relative_pos: int  # -1 when not found
    distractor_start: int
    distractor_end: int


def parse_analogies(lines: list[str]) -> dict[str, list[tuple[str, str]]]:
    """category -> unique (a, b) word pairs in first-seen order (the original's parsing)."""
    chunks = " ".join(line.rstrip("\n") for line in lines).split(":")
    out: dict[str, list[tuple[str, str]]] = {}
    for index in range(1, len(chunks)):
        parts = chunks[index].split(" ")
        category, words = parts[1], parts[2:]
        if index != len(chunks) - 1:
            words = words[:-1]  # the space before the next ':'
        words = [w for w in words if w]
        pairs = list(zip(words[0::2], words[1::2], strict=False))  # an odd last word has no pair: dropped
        out[category] = list(dict.fromkeys(pairs))
    return out


def _encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def single_token(tokenizer: Any, word: str, rule: str) -> bool:
    if rule == "none":
        return True
    if rule == "space_prefixed":
        return len(_encode(tokenizer, " " + word)) == 1
    if rule == "original":
        if "gpt2" in str(tokenizer.name_or_path):
            return len(_encode(tokenizer, " " + word, special=True)) == 1
        return len(_encode(tokenizer, word, special=True)) == 2
    raise ValueError(f"single_token_rule must be space_prefixed, original or none; got {rule!r}")


def _patch_currency(pairs: list[tuple[str, str]], how: str) -> list[tuple[str, str]]:
    if how == "by_value":
        fix = {"euro": "Euro", "won": "Won"}
        return [(a, fix.get(b, b)) for a, b in pairs]
    if how == "by_index":
        out = list(pairs)
        for index, value in ((4, "Euro"), (6, "Won")):
            if index < len(out):
                out[index] = (out[index][0], value)
        return out
    if how == "none":
        return pairs
    raise ValueError(f"currency_patch must be by_value, by_index or none; got {how!r}")


def _first(ids: list[int], token: int) -> int:
    return ids.index(token) if token in ids else -1


def _strip_trailing_special(tokenizer: Any, ids: list[int]) -> list[int]:
    special = set(tokenizer.all_special_ids)
    while len(ids) > 1 and ids[-1] in special:
        ids = ids[:-1]
    return ids


@torch.inference_mode()
def _greedy_next(model: Any, seqs: list[list[int]], device: Any, batch: int = 32) -> list[int]:
    from tasks.common.lm import last_logits, right_pad

    out: list[int] = []
    for start in range(0, len(seqs), batch):
        chunk = [torch.tensor(s, device=device) for s in seqs[start : start + batch]]
        ids, lengths = right_pad(chunk)
        out += last_logits(model, lengths - 1, input_ids=ids).argmax(-1).tolist()
    return out


def prepare_analogies(
    model: Any,
    tokenizer: Any,
    lines: list[str],
    single_token_rule: str = "space_prefixed",
    currency_patch: str = "by_value",
    require_correct: bool = True,
    target_position: str = "last",
    categories: list[str] | None = None,
    device: Any = "cpu",
) -> list[AnalogyExample]:
    """The analogy inputs the original would attribute (see module doc), in file order."""
    if target_position not in ("last", "first_occurrence"):
        raise ValueError(f"target_position must be last or first_occurrence; got {target_position!r}")
    parsed = parse_analogies(lines)
    start_tok = _encode(tokenizer, " (")[-1]
    end_tok = _encode(tokenizer, ").")[-1]
    candidates = []
    for analogy_idx, (category, pairs) in enumerate(parsed.items()):
        if category not in TEMPLATES or (categories and category not in categories):
            continue
        kept = [(a, b) for a, b in pairs if single_token(tokenizer, a, single_token_rule)
                and single_token(tokenizer, b, single_token_rule)]
        if category == "currency":
            kept = _patch_currency(kept, currency_patch)
        template = TEMPLATES[category]
        target_tag = "a" if template.index("[A]") > template.index("[B]") else "b"
        for pair_idx, (a, b) in enumerate(kept):
            sentence = template.replace("[A]", a).replace("[B]", b)
            ids = _strip_trailing_special(tokenizer, list(tokenizer(sentence)["input_ids"]))
            target_word, relative_word = (a, b) if target_tag == "a" else (b, a)
            ds, de = _first(ids, start_tok), _first(ids, end_tok)
            candidates.append((category, analogy_idx, pair_idx, sentence, ids, target_word, relative_word, ds, de))

    if require_correct:
        candidates = [c for c in candidates if c[7] >= 0 and c[8] > c[7]]
        full = [c[4][:-1] for c in candidates]
        short = [c[4][: c[7]] + c[4][c[8] + 1 : -1] for c in candidates]
        preds = _greedy_next(model, full + short, device)
        ok = []
        for i, c in enumerate(candidates):
            words = [tokenizer.decode([*seq, preds[j]]).split(" ")[-1] for seq, j in
                     ((full[i], i), (short[i], len(candidates) + i))]
            ok.append(all(w == c[5] for w in words))
        candidates = [c for c, keep in zip(candidates, ok, strict=True) if keep]

    examples: list[AnalogyExample] = []
    for category, analogy_idx, pair_idx, sentence, ids, target_word, relative_word, ds, de in candidates:
        pos = len(ids) - 1
        if target_position == "first_occurrence":
            found = _first(ids, _encode(tokenizer, " " + target_word)[-1])
            pos = found if found > 0 else pos
        examples.append(AnalogyExample(
            id=len(examples), category=category, analogy_idx=analogy_idx, pair_idx=pair_idx, text=sentence,
            prefix=tuple(ids[:pos]), target=ids[pos], target_text=tokenizer.decode([ids[pos]]),
            relative_pos=_first(ids[:pos], _encode(tokenizer, " " + relative_word)[-1]),
            distractor_start=ds, distractor_end=de,
        ))
    return examples


def read_prepared(path: str | Path, tokenizer: Any = None) -> list[AnalogyExample]:
    """The original's prepared analogy inputs (JSONL with input_tokens, target_token, input_text, ...).

    The ids are the original tokenizer's: use the model the file names (its "model" field). With a
    tokenizer, ids beyond its vocabulary fail here rather than inside the model.
    """
    examples = []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for r in records:
        prefix, target = tuple(int(i) for i in r["input_tokens"]), int(r["target_token"])
        if tokenizer is not None and max((*prefix, target)) >= len(tokenizer):
            raise ValueError(f"{path} holds ids of {r.get('model', 'another model')}'s tokenizer, beyond this "
                             f"tokenizer's {len(tokenizer)} ids: load that model")
        target_text = r.get("target_text") or (tokenizer.decode([target]) if tokenizer is not None else str(target))
        text = ("".join(r["input_text"]) + target_text if "input_text" in r
                else tokenizer.decode([*prefix, target]))
        examples.append(AnalogyExample(
            id=int(r["id"]), category=str(r.get("category", "")), analogy_idx=-1, pair_idx=-1, text=text,
            prefix=prefix, target=target, target_text=target_text, relative_pos=-1,
            distractor_start=int(r.get("distractor_start", -1)), distractor_end=int(r.get("distractor_end", -1)),
        ))
    return examples


def analogy_lines(dataset: str) -> list[str]:
    """Lines of a questions-words-format source: "builtin" or a path."""
    if dataset == "builtin":
        return BUILTIN_ANALOGIES.splitlines()
    with open(dataset) as f:
        return f.read().splitlines()


def read_prompts(prompts: str) -> list[str]:
    """Prompts, one per line ("builtin" or a path). Trailing spaces are kept (they change tokenisation);
    empty lines are skipped (the original would crash on them)."""
    if prompts == "builtin":
        return list(BUILTIN_PROMPTS)
    with open(prompts) as f:
        return [line for line in f.read().splitlines() if line.strip()]
