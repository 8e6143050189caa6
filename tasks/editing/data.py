"""Data for the editing family: the six canonical-examples datasets, general text, built-in facts.

Datasets (Hewitt et al. 2024, "Model Editing with Canonical Examples", arXiv 2402.06155; files from
john-hewitt/model-editing-canonical-examples, see SOURCE.md next to the data). Per dataset and split
(`val` / `test`, disjoint behaviours) there are four roles:
  train (canonical examples T), eval (E, out of distribution), targeted (degradation-targeted text, `text`),
  hard_negative (H: texts the edit should not change; always single-suffix).
Single-suffix records carry `prefix`, `suffix`; pair records (gender, verb) `prefix`, `suffix1`, `suffix2`
with suffix1 the correct / first continuation. Other fields are ignored, as in the original.

Quirk of the original, fixed by default: test configs read the VAL hard-negative file (the `-test` ones
were never referenced). `load_dataset(..., hard_negative_split="val")` reproduces that.

General text: the original general corpus G (`val-chunked.jsonl`, 3000 chunks of 500 GPT-2 tokens of
OpenWebText validation) and KL corpus R (`trainval-chunked.jsonl`) are not shipped. Substitutes:
`"val100"` = general_text/val100-val.jsonl (4007 OpenWebText documents shipped by the original repo),
`"builtin"` = a few paragraphs below (offline runs and tests), or a path to a jsonl with `text`.

Built-in facts (`BUILTIN_FACTS`): CounterFact-style records for ROME and causal tracing, also exposed as a
canonical-examples dataset named `"facts"` (train: "prompt(subject)" -> true object; eval: a paraphrase;
hard negatives: the other split's canonical prompts; targeted: the statements).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.common.general_text import BUILTIN_GENERAL_TEXT as BUILTIN_GENERAL_TEXT
from tasks.common.general_text import data_dir, read_texts
from tasks.common.general_text import general_texts as general_texts

SPLITS = ("val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the original: folder, file stems per role, loss type and success threshold."""

    folder: str
    train: str
    eval: str
    targeted: str
    hard_negative: str
    pair: bool
    loss_type: str  # good | bad | balance | good-v-bad
    threshold: float  # delta of the per-example verdict (see ops.losses.example_success)


DATASETS: dict[str, DatasetSpec] = {
    "country": DatasetSpec(
        "country_capital", "country_capital_fixed", "country_capital_clear_eval",
        "country_capital_unconditional", "country_capital_hard_neg", False, "good", 1.6094379124341003,
    ),
    "company": DatasetSpec(
        "company_ceo", "company_ceo_train", "company_ceo_eval_clear", "company_ceo_unconditional",
        "company_ceo_hard_neg_eval_clear", False, "good", 2.995732273553991,
    ),
    "gender": DatasetSpec(
        "pronoun_gender_bias", "pronoun_gender_bias_train", "pronoun_gender_bias_eval",
        "pronoun_gender_bias_unconditional", "pronoun_gender_bias_hard_neg_eval", True, "balance",
        0.4054651081081646,
    ),
    "temporal": DatasetSpec(
        "temporal", "temporal_train", "temporal_eval_clear", "temporal_unconditional",
        "temporal_hard_neg_eval_clear", False, "good", 2.995732273553991,
    ),
    "stereoset": DatasetSpec(
        "stereoset", "stereoset_train", "stereoset_eval_clear", "stereoset_unconditional",
        "stereoset_hard_neg", False, "bad", -6.907755278982137,
    ),
    "verb": DatasetSpec(
        "verb_conjugation", "verb_conjugation_train", "verb_conjugation_eval",
        "verb_conjugation_eval_unconditional", "verb_conjugation_hard_neg_eval", True, "good-v-bad",
        -2.772588722239781,
    ),
}
BUILTIN_DATASET = "facts"
DATASET_NAMES = (*DATASETS, BUILTIN_DATASET)


@dataclass(frozen=True)
class Example:
    """A prefix and one continuation (or two for pair datasets: correct / first, then the other)."""

    prefix: str
    suffixes: tuple[str, ...]


@dataclass
class EditingData:
    """Everything one fine-tuning run reads, for one dataset and split."""

    name: str
    split: str
    loss_type: str
    threshold: float
    pair: bool
    train: list[Example]
    eval: list[Example]
    hard_negative: list[Example]
    targeted: list[str]
    files: dict[str, str] = field(default_factory=dict)  # role -> path read (empty for built-in data)


# --------------------------------------------------------------------------------------------------
# files


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a jsonl file (blank lines skipped; a last line without newline is fine)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_examples(path: str | os.PathLike, pair: bool) -> list[Example]:
    """Prefix/suffix records (`suffix`) or pair records (`suffix1`, `suffix2`) of an original file."""
    examples = []
    for i, record in enumerate(read_jsonl(path)):
        try:
            suffixes = (record["suffix1"], record["suffix2"]) if pair else (record["suffix"],)
            examples.append(Example(record["prefix"], tuple(suffixes)))
        except KeyError as exc:
            raise ValueError(f"{path}: record {i} has no field {exc} (pair={pair})") from exc
    return examples


def dataset_files(name: str, split: str, root: Path, hard_negative_split: str | None = None) -> dict[str, Path]:
    """role -> file of dataset `name` for `split` (`hard_negative_split` defaults to `split`)."""
    spec = DATASETS[name]
    hn_split = hard_negative_split or split
    folder = root / spec.folder
    return {
        "train": folder / f"{spec.train}-{split}.jsonl",
        "eval": folder / f"{spec.eval}-{split}.jsonl",
        "targeted": folder / f"{spec.targeted}-{split}.jsonl",
        "hard_negative": folder / f"{spec.hard_negative}-{hn_split}.jsonl",
    }


def load_dataset(
    name: str,
    split: str,
    data_dir_: str | os.PathLike | None = None,
    hard_negative_split: str | None = None,
) -> EditingData:
    """Read one dataset and split. `name` is one of DATASET_NAMES ("facts" needs no files)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
    if hard_negative_split is not None and hard_negative_split not in SPLITS:
        raise ValueError(f"hard_negative_split must be one of {SPLITS}, got {hard_negative_split!r}")
    if name == BUILTIN_DATASET:
        return builtin_facts_dataset(split, hard_negative_split)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset={name!r}; known: {', '.join(DATASET_NAMES)}")
    spec = DATASETS[name]
    files = dataset_files(name, split, data_dir(data_dir_), hard_negative_split)
    return EditingData(
        name=name,
        split=split,
        loss_type=spec.loss_type,
        threshold=spec.threshold,
        pair=spec.pair,
        train=read_examples(files["train"], spec.pair),
        eval=read_examples(files["eval"], spec.pair),
        hard_negative=read_examples(files["hard_negative"], pair=False),
        targeted=read_texts(files["targeted"]),
        files={role: str(path) for role, path in files.items()},
    )


# --------------------------------------------------------------------------------------------------
# built-in data (offline runs, quickstart, tests)


@dataclass(frozen=True)
class Fact:
    """A CounterFact-style record: prompt with "{}" for the subject, true and counterfactual objects."""

    subject: str
    prompt: str
    target_true: str
    target_new: str
    paraphrase: str  # another prompt with "{}", same relation
    neighborhood: tuple[str, ...]  # full prompts about other subjects whose true object is target_true

    def text(self) -> str:
        return self.prompt.format(self.subject)


BUILTIN_FACTS: tuple[Fact, ...] = (
    Fact("The Eiffel Tower", "{} is located in the city of", "Paris", "Rome",
         "Tourists who visit {} spend the day in the city of",
         ("The Louvre is located in the city of", "Notre-Dame Cathedral is located in the city of")),
    Fact("The Colosseum", "{} is located in the city of", "Rome", "London",
         "Tourists who visit {} spend the day in the city of",
         ("The Trevi Fountain is located in the city of", "The Pantheon is located in the city of")),
    Fact("Big Ben", "{} is located in the city of", "London", "Berlin",
         "Tourists who visit {} spend the day in the city of",
         ("Buckingham Palace is located in the city of", "Westminster Abbey is located in the city of")),
    Fact("The Brandenburg Gate", "{} is located in the city of", "Berlin", "Madrid",
         "Tourists who visit {} spend the day in the city of",
         ("The Reichstag building is located in the city of", "Checkpoint Charlie is located in the city of")),
    Fact("France", "The capital of {} is", "Paris", "Lyon",
         "Everyone knows that the capital city of {} is",
         ("The largest city in France is", "The French government sits in")),
    Fact("Japan", "The capital of {} is", "Tokyo", "Osaka",
         "Everyone knows that the capital city of {} is",
         ("The largest city in Japan is", "The Japanese government sits in")),
    Fact("Lionel Messi", "{} plays the sport of", "soccer", "basketball",
         "As a professional athlete, {} is famous for playing",
         ("Cristiano Ronaldo plays the sport of", "Neymar plays the sport of")),
    Fact("Michael Jordan", "{} plays the sport of", "basketball", "baseball",
         "As a professional athlete, {} is famous for playing",
         ("LeBron James plays the sport of", "Kobe Bryant plays the sport of")),
    Fact("Windows", "{} was developed by", "Microsoft", "Apple",
         "The software product {} is made by the company",
         ("Microsoft Office was developed by", "Xbox was developed by")),
    Fact("The iPhone", "{} was developed by", "Apple", "Google",
         "The phone known as {} is made by the company",
         ("The iPad was developed by", "The MacBook was developed by")),
    Fact("Germany", "The official language of {} is", "German", "French",
         "In {} most people speak",
         ("The official language of Austria is", "The language spoken in Berlin is")),
    Fact("Spain", "The official language of {} is", "Spanish", "English",
         "In {} most people speak",
         ("The official language of Mexico is", "The language spoken in Madrid is")),
    Fact("Toyota", "{} is a car company from", "Japan", "Italy",
         "The cars made by {} come from the country of",
         ("Honda is a car company from", "Nissan is a car company from")),
    Fact("Volkswagen", "{} is a car company from", "Germany", "Sweden",
         "The cars made by {} come from the country of",
         ("BMW is a car company from", "Mercedes-Benz is a car company from")),
    Fact("Albert Einstein", "{} is famous for the theory of", "relativity", "evolution",
         "The physicist {} developed the theory of",
         ("The physicist who developed the theory of general relativity was",)),
    Fact("The Nile", "{} is a river in", "Africa", "Europe",
         "The long river called {} flows through",
         ("The Congo River is a river in", "The Zambezi is a river in")),
)



def _split_facts(split: str) -> tuple[list[Fact], list[Fact]]:
    """(this split's facts, the other split's): even-indexed facts are val, odd ones test, so both
    splits cover every relation with disjoint subjects (as the original's per-entity splits)."""
    even, odd = list(BUILTIN_FACTS[0::2]), list(BUILTIN_FACTS[1::2])
    return (even, odd) if split == "val" else (odd, even)


def builtin_facts_dataset(split: str, hard_negative_split: str | None = None) -> EditingData:
    """The "facts" dataset: val = even-indexed BUILTIN_FACTS, test = odd-indexed (disjoint subjects).

    train: canonical "prompt(subject)" -> " true object"; eval: the paraphrase prompt -> same object;
    hard negatives: the canonical prompts of the other half (different subjects, their own objects);
    targeted: "prompt(subject) object." statements. Loss type "good", threshold -ln 0.2 (as country).
    """
    mine = _split_facts(split)[0]
    others = _split_facts(hard_negative_split or split)[1]
    return EditingData(
        name=BUILTIN_DATASET,
        split=split,
        loss_type="good",
        threshold=DATASETS["country"].threshold,
        pair=False,
        train=[Example(f.text(), (" " + f.target_true,)) for f in mine],
        eval=[Example(f.paraphrase.format(f.subject), (" " + f.target_true,)) for f in mine],
        hard_negative=[Example(f.text(), (" " + f.target_true,)) for f in others],
        targeted=[f"{f.text()} {f.target_true}." for f in mine],
    )


def read_trace_facts(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(prompt with "{}", subject, target) per record of a facts file for causal tracing.

    Accepts ROME's known_1000.json records ({"template", "subject", "attribute", ...}, a JSON list or
    jsonl) and plain {"prompt" (with "{}"), "subject", "target"} records.
    """
    text = Path(path).read_text(encoding="utf-8").lstrip()
    records = json.loads(text) if text.startswith("[") else read_jsonl(path)
    out = []
    for i, r in enumerate(records):
        template = r.get("template") or r.get("prompt")
        target = r.get("attribute") if r.get("attribute") is not None else r.get("target")
        if not template or "{}" not in template or "subject" not in r or target is None:
            raise ValueError(
                f"{path}: record {i} needs a template/prompt with '{{}}', a subject and an attribute/target")
        out.append((template, r["subject"], target))
    return out


def read_counterfact(path: str | os.PathLike) -> list[Fact]:
    """CounterFact records (ROME's counterfact.json: a JSON list, or jsonl) as `Fact`s.

    requested_rewrite {prompt with "{}", subject, target_new.str, target_true.str}; the first paraphrase
    prompt (already containing the subject) becomes `paraphrase` with the subject replaced by "{}" where
    it occurs; neighborhood_prompts are kept as they are.
    """
    text = Path(path).read_text(encoding="utf-8").lstrip()
    records = json.loads(text) if text.startswith("[") else read_jsonl(path)
    facts = []
    for r in records:
        rw = r["requested_rewrite"]
        paraphrases = r.get("paraphrase_prompts") or [rw["prompt"].format(rw["subject"])]
        paraphrase = paraphrases[0].replace(rw["subject"], "{}", 1) if rw["subject"] in paraphrases[0] else rw["prompt"]
        facts.append(
            Fact(rw["subject"], rw["prompt"], rw["target_true"]["str"], rw["target_new"]["str"], paraphrase,
                 tuple(r.get("neighborhood_prompts") or ()))
        )
    return facts


# --------------------------------------------------------------------------------------------------
# edit requests of the ROME and MEMIT tasks (params -> request)


def rome_request(params: Any, model, tokenizer, device) -> dict[str, Any]:
    """The request (subject, prompt, targets) and the prompts to evaluate: (kind, full text) pairs."""
    from tasks.editing.ops.counterfact import greedy_token

    if params.subject is None:
        facts = read_counterfact(params.counterfact_file) if params.counterfact_file else BUILTIN_FACTS
        if params.fact >= len(facts):
            raise ValueError(f"fact={params.fact} out of range for {len(facts)} facts")
        fact = facts[params.fact]
        subject, prompt, target_new = fact.subject, fact.prompt, fact.target_new
        target_true = params.target_true or fact.target_true
        paraphrases = params.paraphrases if params.paraphrases is not None else [fact.paraphrase]
        neighborhood = params.neighborhood if params.neighborhood is not None else list(fact.neighborhood)
    else:
        # RomeParams' validator (tasks.editing.params): subject, prompt and target_new come together
        assert params.prompt is not None and params.target_new is not None
        subject, prompt, target_new = params.subject, params.prompt, params.target_new
        target_true = params.target_true or greedy_token(model, tokenizer, prompt.format(subject), device)
        paraphrases, neighborhood = params.paraphrases or [], params.neighborhood or []
    prompts = [("rewrite", prompt.format(subject))]
    prompts += [("paraphrase", p.format(subject)) for p in paraphrases]
    prompts += [("neighborhood", p) for p in neighborhood]
    space = lambda s: s if s.startswith(" ") else " " + s  # noqa: E731
    return {
        "subject": subject, "prompt": prompt, "target_new": space(target_new),
        "target_true": space(target_true), "prompts": prompts,
    }


def memit_requests(params: Any, dataset) -> list:
    """One request per canonical example: prompt "{}" with the whole prefix as subject (prefix), or the
    annotated subject (true; only the built-in facts carry one: the paper's annotations are not public)."""
    from tasks.editing.ops.memit import MemitRequest

    train = dataset.train[: params.max_train]
    if params.subject_type == "true":  # MemitParams' validator: only with dataset 'facts'
        facts = _split_facts(params.split)[0][: len(train)]
        return [MemitRequest(f.prompt, f.subject, ex.suffixes[0], ex.suffixes[1] if len(ex.suffixes) > 1 else None)
                for f, ex in zip(facts, train, strict=True)]
    return [MemitRequest("{}", ex.prefix, ex.suffixes[0], ex.suffixes[1] if len(ex.suffixes) > 1 else None)
            for ex in train]
