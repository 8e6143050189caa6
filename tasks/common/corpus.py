"""A small built-in English corpus for training the tiny models' tokenizers (a few KB, no downloads).

Plain sentences: simple facts (capitals, languages, animals, colours) and everyday words, repeated
often enough that byte-level BPE with a 512-token vocabulary learns whole-word tokens such as " the",
" cat", " dog" and " Paris", so probing and editing tasks have real tokens to work with.
Changing this text changes the tiny models: bump `tasks.common.tiny.TINY_VERSION` when you do.
"""

from __future__ import annotations

__all__ = ["ANIMALS", "CAPITALS", "COLOURS", "CORPUS", "LANGUAGES", "corpus_lines"]

# Country -> capital city. Public so tests and tasks can build fact prompts the tokenizer has seen.
CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "England": "London",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "China": "Beijing",
}

# Country -> language spoken there.
LANGUAGES: dict[str, str] = {
    "France": "French",
    "Germany": "German",
    "Italy": "Italian",
    "Spain": "Spanish",
    "Japan": "Japanese",
    "England": "English",
    "Russia": "Russian",
    "China": "Chinese",
}

ANIMALS: tuple[str, ...] = ("cat", "dog", "bird", "fish", "horse", "cow", "mouse", "lion")
COLOURS: tuple[str, ...] = ("red", "blue", "green", "black", "white", "yellow")

_PROSE = """\
The cat sat on the mat. The dog sat on the floor. The cat is small and the dog is big.
A cat likes to sleep in the sun. A dog likes to run in the park. The bird can fly over the tree.
The fish swims in the water. The horse runs in the field. The cow eats grass in the field.
The mouse is afraid of the cat. The cat is afraid of the dog. The lion is the king of the animals.
My dog is called Max and my cat is called Lily. The dog and the cat are good friends.
I have a red car and a blue bike. The sky is blue and the grass is green. Snow is white.
The sun is hot and yellow. The night is dark and black. Apples are red or green.
She went to the store to buy bread, milk and eggs. He went to the market to buy fish and rice.
We eat breakfast in the morning, lunch at noon and dinner in the evening.
The children play in the garden after school. The teacher reads a book to the children.
My mother works in a hospital. My father works in an office. My brother is a student.
My sister plays the piano. My friend plays the guitar. We like to sing and dance.
It is raining today, so I will take an umbrella. Tomorrow it will be sunny and warm.
There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.
There are twelve months in a year. January is the first month and December is the last month.
One, two, three, four, five, six, seven, eight, nine, ten.
The train leaves the station at nine in the morning. The bus is late again today.
Water boils at one hundred degrees. Ice is cold and fire is hot.
The house has a big kitchen, a small garden and three rooms.
The old man walked his dog along the river. The young woman fed the cat with fish.
The book is on the table. The keys are in the box. The phone is under the bed.
Please open the door and close the window. Thank you for your help.
The sun rises in the east and sets in the west. The moon shines at night.
The earth goes around the sun. There are many stars in the sky.
Paris is a beautiful city. London is a large city. Rome is an old city. Tokyo is a busy city.
People in France speak French. People in Germany speak German. People in Spain speak Spanish.
The river runs through the city. The bridge crosses the river. The road goes to the town.
"""


def _facts() -> str:
    lines = []
    for country, city in CAPITALS.items():
        lines.append(f"The capital of {country} is {city}.")
        lines.append(f"{city} is the capital of {country}.")
        lines.append(f"The capital city of {country} is {city}, and {city} is in {country}.")
    for country, language in LANGUAGES.items():
        lines.append(f"The language of {country} is {language}.")
        lines.append(f"In {country}, people speak {language}.")
    for animal in ANIMALS:
        lines.append(f"The {animal} is an animal. I saw a {animal} today. The {animal} is here.")
    for colour in COLOURS:
        lines.append(f"The {colour} ball is on the floor. I like the colour {colour}.")
    return "\n".join(lines) + "\n"


CORPUS: str = _PROSE + _facts()


def corpus_lines() -> list[str]:
    """The built-in corpus as a list of non-empty lines (what the tokenizer trainers iterate over)."""
    return [line for line in CORPUS.splitlines() if line.strip()]
