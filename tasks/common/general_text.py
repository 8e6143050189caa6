"""General text: the text an edited or fine-tuned model should go on predicting (editing's degradation
text, probing's fact-injection check), and the canonical_examples folder it can come from.

Sources (`general_texts`): `"builtin"` = a few paragraphs below (offline runs and tests), `"val100"` =
general_text/val100-val.jsonl of the canonical_examples data (4007 OpenWebText documents shipped by
john-hewitt/model-editing-canonical-examples, see tasks/editing/data.py), or a path to a jsonl with `text`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from tasks.common.data import read_jsonl

DATA_ENV = "CANONICAL_EXAMPLES_DIR"


def _candidate_roots() -> Iterator[Path]:
    env = os.environ.get(DATA_ENV)
    if env:
        yield Path(env)
    here = Path(__file__).resolve()
    for ancestor in here.parents:
        yield ancestor / "data" / "canonical_examples"
        yield ancestor / "shared" / "data" / "canonical_examples"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The canonical_examples folder: `explicit`, $CANONICAL_EXAMPLES_DIR, or data/ or shared/data/ above."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise FileNotFoundError(f"data_dir={str(path)!r} is not a directory")
        return path
    for path in _candidate_roots():
        if (path / "country_capital").is_dir():
            return path
    raise FileNotFoundError(
        "canonical_examples data not found: set $CANONICAL_EXAMPLES_DIR or pass data_dir "
        "(or use dataset='facts', the built-in set)"
    )


def read_texts(path: str | os.PathLike) -> list[str]:
    """The `text` field of every record (degradation-targeted and general-text files)."""
    return [record["text"] for record in read_jsonl(path)]


def general_texts(source: str = "builtin", data_dir_: str | os.PathLike | None = None) -> list[str]:
    """General text: "builtin", "val100" (the shipped OpenWebText sample) or a jsonl path with `text`."""
    if source == "builtin":
        return list(BUILTIN_GENERAL_TEXT)
    if source == "val100":
        return read_texts(data_dir(data_dir_) / "general_text" / "val100-val.jsonl")
    path = Path(source)
    if path.is_file():
        return read_texts(path)
    raise ValueError(f"general text source={source!r} is not 'builtin', 'val100' or an existing jsonl file")


BUILTIN_GENERAL_TEXT: tuple[str, ...] = (
    "The morning was cold and clear. She walked to the station, bought a coffee and waited for the train.",
    "Many cities have invested in public transport over the last decade, and the number of people who "
    "take the bus to work has grown every year.",
    "The committee met on Tuesday to discuss the budget. After a long debate, the members agreed to "
    "postpone the vote until the next meeting.",
    "He opened the book and started to read. The story was about a small village in the mountains and "
    "the people who lived there.",
    "Scientists have found that regular exercise improves sleep, mood and memory, even for people who "
    "start late in life.",
    "The restaurant on the corner serves fresh bread every morning, and there is usually a line of "
    "customers outside before it opens.",
    "When the storm arrived, the power went out across the town. Families lit candles and listened to "
    "the radio for news.",
    "The team won the final match after a difficult season. The players thanked their fans and "
    "celebrated late into the night.",
    "Learning a new language takes time. It helps to read every day, to listen to music and to speak "
    "with other people as often as possible.",
    "The museum opened a new exhibition about the history of the city, with old maps, photographs and "
    "letters written by its first residents.",
    "Farmers in the region grow wheat, corn and potatoes. This year the harvest was good because the "
    "summer was warm and there was enough rain.",
    "The company announced that it would hire two hundred new workers and open a second factory near "
    "the river next spring.",
    "Children played in the park while their parents talked on the benches under the trees.",
    "The report says that the price of food rose by three percent last year, mostly because of higher "
    "energy costs.",
    "After dinner they went for a walk along the beach and watched the sun go down over the water.",
    "The new bridge will connect the two parts of the city and reduce the time it takes to cross the "
    "river by half.",
    "Doctors recommend drinking enough water, eating vegetables and getting at least seven hours of "
    "sleep every night.",
    "The library is open every day except Sunday. Visitors can borrow up to ten books at a time.",
    "Her first novel was published when she was twenty five, and it was translated into more than "
    "twenty languages.",
    "The old house at the end of the street had been empty for years until a young family bought it "
    "and painted it blue.",
    "Engineers tested the new engine for several weeks before they were satisfied that it was safe.",
    "Every summer the town holds a music festival, and thousands of people come to listen to bands "
    "from all over the country.",
    "The teacher asked the students to write a short essay about their favourite place and to explain "
    "why it mattered to them.",
    "Prices of houses in the capital have risen quickly, and many young people now live with their "
    "parents for longer than before.",
)
