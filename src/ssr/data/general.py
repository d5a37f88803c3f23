"""The built-in general instruction set (`{name: general, builtin: true}`): open-domain
instructions with reference answers, in Alpaca's shape (`instruction`, `input`, `output`,
input often empty).

Written for this project and released with it under the Apache License 2.0 (the project's
licence): the hand-written items are the project's own text, and the generated items come from
the project's own templates and word lists, each with an answer computed by the generator, so it
is correct by construction (arithmetic, string and list manipulation, unit conversion,
rewriting). No third-party data set is copied.

It stands in for the instruction-tuning data a chat model learnt and whose data is gone (the
paper's Alpaca-52k): listed as a `learnt` task, its train split is what replay may keep and its
demos split what SSR synthesises from; its eval split is held out, the instruction-following
check of `eval.general.instructions`. Splits are deterministic and disjoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ssr.data.task import Instance, Task

NAME = "general"
DEFINITION = "(open-domain: every instance carries its own instruction)"
SPLIT_SIZES = {"eval": 60, "demos": 20}  # the rest is train
SEED = 20261127

# (instruction, input, output): the project's own text.
HAND_WRITTEN: tuple[tuple[str, str, str], ...] = (
    ("Give a one-sentence definition of a noun.", "", "A noun is a word that names a person, place, thing or idea."),
    ("Explain what a verb is in one sentence.", "", "A verb is a word that describes an action, an event or a state."),
    ("Name the three primary colours of paint.", "", "Red, yellow and blue."),
    ("How many days are there in a leap year?", "", "There are 366 days in a leap year."),
    ("How many minutes are there in an hour?", "", "There are 60 minutes in an hour."),
    ("What is the freezing point of water in degrees Celsius?", "", "Water freezes at 0 degrees Celsius."),
    ("What is the boiling point of water at sea level in degrees Celsius?", "", "Water boils at 100 degrees Celsius at sea level."),
    ("Name the planet closest to the Sun.", "", "Mercury is the planet closest to the Sun."),
    ("What gas do plants take in from the air to make their food?", "", "Plants take in carbon dioxide."),
    ("List the four seasons of the year.", "", "Spring, summer, autumn and winter."),
    ("Give the opposite of the word.", "ancient", "modern"),
    ("Give the opposite of the word.", "generous", "selfish"),
    ("Give the opposite of the word.", "expand", "shrink"),
    ("Give a synonym of the word.", "rapid", "fast"),
    ("Give a synonym of the word.", "begin", "start"),
    ("Give a synonym of the word.", "tiny", "small"),
    ("Correct the spelling mistake in the sentence.", "She recieved a letter yesterday.", "She received a letter yesterday."),
    ("Correct the spelling mistake in the sentence.", "We will meet tommorow at noon.", "We will meet tomorrow at noon."),
    ("Correct the grammar of the sentence.", "He go to school every day.", "He goes to school every day."),
    ("Correct the grammar of the sentence.", "They was happy with the result.", "They were happy with the result."),
    ("Rewrite the sentence in the passive voice.", "The cat chased the mouse.", "The mouse was chased by the cat."),
    ("Rewrite the sentence in the passive voice.", "The committee approved the plan.", "The plan was approved by the committee."),
    ("Rewrite the sentence in the past tense.", "I walk to the market.", "I walked to the market."),
    ("Rewrite the sentence in the past tense.", "She plays the piano after dinner.", "She played the piano after dinner."),
    ("Rewrite the sentence to sound more formal.", "Can you send me the file asap?", "Could you please send me the file as soon as possible?"),
    ("Rewrite the sentence to sound more polite.", "Give me the report.", "Could you please give me the report?"),
    ("Summarize the text in one sentence.",
     "The town library will close for two weeks in March while the roof is repaired. Books can still be returned through the drop box, and the online catalogue stays open.",
     "The library closes for two weeks in March for roof repairs, but returns and the online catalogue remain available."),
    ("Summarize the text in one sentence.",
     "Our team tested three backpacks on a week-long hike. The lightest one tore on the second day, while the heaviest stayed dry in the rain and had the most comfortable straps.",
     "On a week-long hike, the heaviest backpack performed best while the lightest one tore."),
    ("Summarize the text in one sentence.",
     "Regular stretching improves flexibility and can reduce muscle soreness. Experts suggest holding each stretch for about thirty seconds and never bouncing.",
     "Stretching regularly, held for about thirty seconds without bouncing, improves flexibility and reduces soreness."),
    ("Classify the animal as a mammal, bird, fish or reptile.", "eagle", "bird"),
    ("Classify the animal as a mammal, bird, fish or reptile.", "dolphin", "mammal"),
    ("Classify the animal as a mammal, bird, fish or reptile.", "lizard", "reptile"),
    ("Classify the animal as a mammal, bird, fish or reptile.", "salmon", "fish"),
    ("Is the food a fruit or a vegetable?", "carrot", "vegetable"),
    ("Is the food a fruit or a vegetable?", "banana", "fruit"),
    ("Is the sentiment of the sentence positive or negative?", "The service was slow and the soup was cold.", "negative"),
    ("Is the sentiment of the sentence positive or negative?", "What a wonderful surprise, thank you so much!", "positive"),
    ("Write a short title for the text.",
     "Volunteers planted two hundred trees along the river on Saturday to help prevent flooding.",
     "Volunteers Plant Trees to Prevent Flooding"),
    ("Write a short title for the text.",
     "A new bus line will connect the university and the train station every ten minutes from next month.",
     "New Bus Line Links University and Station"),
    ("Give one tip for sleeping better.", "", "Go to bed and wake up at the same time every day."),
    ("Give one tip for saving money on groceries.", "", "Make a shopping list before you go and stick to it."),
    ("Give one reason why exercise is good for health.", "", "Exercise strengthens the heart and improves mood."),
    ("Suggest a name for a pet goldfish.", "", "Bubbles"),
    ("Write a sentence that uses the word.", "umbrella", "I opened my umbrella when the rain started."),
    ("Write a sentence that uses the word.", "library", "She borrowed three novels from the library."),
    ("Explain the difference between weather and climate in one sentence.", "",
     "Weather is the state of the air on a given day, while climate is the typical weather of a place over many years."),
    ("Explain in one sentence why the sky looks blue.", "",
     "Air scatters blue sunlight more than other colours, so the sky looks blue."),
    ("Explain what a recipe is.", "", "A recipe is a set of instructions for preparing a dish, with its ingredients and steps."),
    ("Describe a rainbow in one sentence.", "", "A rainbow is an arc of colours that appears when sunlight shines through raindrops."),
    ("Answer the question with yes or no.", "Is ice colder than boiling water?", "yes"),
    ("Answer the question with yes or no.", "Can a fish live without water for a week?", "no"),
    ("Extract the name of the city from the sentence.", "Last summer we spent a week in Lisbon visiting old friends.", "Lisbon"),
    ("Extract the name of the city from the sentence.", "The conference in Oslo starts on Monday.", "Oslo"),
    ("Extract the date from the sentence.", "The parcel should arrive on 14 May.", "14 May"),
    ("Turn the statement into a question.", "The museum opens at nine.", "When does the museum open?"),
    ("Turn the statement into a question.", "Paul lives in a small village.", "Where does Paul live?"),
    ("Combine the two sentences into one.", "The road was icy. We drove slowly.", "The road was icy, so we drove slowly."),
    ("Combine the two sentences into one.", "I wanted to swim. The pool was closed.", "I wanted to swim, but the pool was closed."),
    ("Complete the sentence.", "An apple a day", "An apple a day keeps the doctor away."),
    ("Write a haiku about the sea.", "", "Waves fold on the sand\nsalt wind carries gull voices\nthe tide breathes and goes"),
    ("Write a two-line poem about morning.", "", "The sun climbs softly over the hill,\nand the quiet house is warm and still."),
    ("Write a friendly one-sentence greeting for a new neighbour.", "",
     "Welcome to the street, we are glad to have you as our neighbour!"),
    ("Write a short thank-you note to a teacher.", "",
     "Thank you for your patience and encouragement this year; your lessons made a real difference to me."),
    ("Give an example of a renewable energy source.", "", "Solar power is a renewable energy source."),
    ("What is the main ingredient of bread?", "", "Flour is the main ingredient of bread."),
    ("Name a tool used to cut paper.", "", "Scissors."),
    ("What do bees make?", "", "Bees make honey and wax."),
    ("Put the steps of making tea in order.", "pour the water, boil the water, add the tea bag",
     "boil the water, add the tea bag, pour the water"),
    ("Explain what a password manager does.", "",
     "A password manager stores your passwords securely and fills them in for you."),
    ("Give a short definition of photosynthesis.", "",
     "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar and oxygen."),
)

WORDS = ("apple river stone cloud garden window paper silver forest candle ladder pillow bridge "
         "market violin basket rocket saddle mirror tunnel meadow harbor lantern puzzle").split()
SUBJECTS = ("The teacher", "My brother", "The old dog", "A small bird", "Our neighbour", "The pilot")
VERBS = ("found", "painted", "carried", "cleaned", "opened", "watched")
OBJECTS = ("a blue door", "the wooden box", "an empty bottle", "the heavy bag", "a tall tree", "the red kite")
UNITS = (("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("litres", "millilitres", 1000))
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 100 (`forty-two`)."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + (f"-{ONES[ones]}" if ones else "")


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."


def _words(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


# Each generator draws one (instruction, input, output) whose answer is computed, not written.
def _add(rng):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return rng.choice((f"What is {a} + {b}?", f"Add {a} and {b}.")), "", str(a + b)


def _subtract(rng):
    a, b = rng.randint(50, 150), rng.randint(1, 49)
    return rng.choice((f"What is {a} - {b}?", f"Subtract {b} from {a}.")), "", str(a - b)


def _multiply(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return rng.choice((f"What is {a} times {b}?", f"Multiply {a} by {b}.")), "", str(a * b)


def _reverse_words(rng):
    words = _words(rng)
    return "Reverse the order of the words.", " ".join(words), " ".join(reversed(words))


def _upper(rng):
    s = _sentence(rng)
    return "Rewrite the sentence in capital letters.", s, s.upper()


def _count_words(rng):
    s = _sentence(rng) if rng.random() < 0.5 else " ".join(_words(rng, 2, 7))
    return "How many words are in the text? Answer with a number.", s, str(len(s.split()))


def _sort_words(rng):
    words = _words(rng)
    return "Sort the list in alphabetical order.", ", ".join(words), ", ".join(sorted(words))


def _largest(rng):
    nums = rng.sample(range(1, 500), rng.randint(3, 6))
    return "Which number in the list is the largest?", ", ".join(map(str, nums)), str(max(nums))


def _convert(rng):
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 12)
    return f"Convert {n} {big} to {small}.", "", f"{n * factor} {small}"


def _celsius(rng):
    c = 5 * rng.randint(-4, 20)
    return f"Convert {c} degrees Celsius to degrees Fahrenheit.", "", f"{c * 9 // 5 + 32} degrees Fahrenheit"


def _spell_number(rng):
    n = rng.randint(0, 99)
    return "Write the number in words.", str(n), number_words(n)


def _acronym(rng):
    words = _words(rng, 2, 4)
    return "Form an acronym from the first letter of each word.", " ".join(words), "".join(w[0] for w in words).upper()


def _replace_word(rng):
    s = _sentence(rng)
    old = s.split()[-1].rstrip(".")
    new = rng.choice([w for w in WORDS if w != old])
    head, _, tail = s.rpartition(old)  # the last word: the one named
    return f"Replace the word '{old}' with '{new}' in the sentence.", s, f"{head}{new}{tail}"


def _parity(rng):
    n = rng.randint(1, 999)
    return f"Is {n} an even or an odd number?", "", "even" if n % 2 == 0 else "odd"


def _dedupe(rng):
    base = _words(rng, 3, 5)
    items = base + rng.sample(base, 2)
    rng.shuffle(items)
    seen = list(dict.fromkeys(items))
    return "Remove the repeated items from the list, keeping the first occurrence of each.", ", ".join(items), ", ".join(seen)


def _weekday(rng):
    d, k = rng.randrange(7), rng.randint(2, 5)
    return f"Which day of the week comes {number_words(k)} days after {DAYS[d]}?", "", DAYS[(d + k) % 7]


def _first_last(rng):
    words = _words(rng, 3, 6)
    return "What is the last word of the list?", " ".join(words), words[-1]


def _letters(rng):
    w = rng.choice(WORDS)
    return f"How many letters are in the word '{w}'?", "", str(len(w))


GENERATORS: tuple[Callable[[random.Random], tuple[str, str, str]], ...] = (
    _add, _subtract, _multiply, _reverse_words, _upper, _count_words, _sort_words, _largest, _convert,
    _celsius, _spell_number, _acronym, _replace_word, _parity, _dedupe, _weekday, _first_last, _letters,
)
PER_GENERATOR = 14


def general_items() -> list[tuple[str, str, str]]:
    """Every (instruction, input, output) of the set, hand-written first; no two share
    instruction and input."""
    items = list(HAND_WRITTEN)
    seen = {(i, x) for i, x, _ in items}
    rng = random.Random(SEED)
    for gen in GENERATORS:
        made = 0
        while made < PER_GENERATOR:
            item = gen(rng)
            if (item[0], item[1]) not in seen:
                seen.add((item[0], item[1]))
                items.append(item)
                made += 1
    return items


def general_task() -> Task:
    """The set as an open-domain Task: a deterministic shuffle split into eval / demos / train."""
    items = general_items()
    order = list(range(len(items)))
    random.Random(SEED + 1).shuffle(order)
    splits, start = {}, 0
    sizes = {**SPLIT_SIZES, "train": len(items) - sum(SPLIT_SIZES.values())}
    for split in ("eval", "demos", "train"):
        splits[split] = [Instance(f"{NAME}-{split}-{k}", items[i][1], items[i][2], items[i][0])
                         for k, i in enumerate(order[start : start + sizes[split]])]
        start += sizes[split]
    return Task(NAME, DEFINITION, splits["train"], splits["eval"], splits["demos"], open_domain=True)
