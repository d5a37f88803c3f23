"""A small built-in task suite, generated from the project's own templates and word lists.

The tasks read the same kind of input (a one-sentence product review) and ask different
questions about it, so their answers compete: a model fine-tuned on one question tends to
answer it for the others too, which is where continual learning forgets. Splits are
deterministic (fixed per-task seeds), disjoint, and independent of the run's seed.
"""

from __future__ import annotations

import random

from ssr.data.task import Instance, Task

PRODUCTS = ("kettle blender toaster lamp backpack jacket headphones keyboard umbrella mug tent bicycle "
            "camera watch scarf pillow printer speaker notebook suitcase").split()
CITIES = ("Paris Berlin Madrid Rome Vienna Lisbon Prague Dublin Oslo Athens Warsaw Zurich Boston Denver "
          "Chicago Toronto Sydney Tokyo Seoul Cairo").split()
PRAISE = ("works perfectly", "exceeded my expectations", "is sturdy and well made", "has been great every day",
          "was worth every penny", "does exactly what I wanted")
COMPLAINTS = ("broke after a week", "stopped working after two days", "was a waste of money",
              "feels cheap and flimsy", "arrived damaged", "is the worst thing I own")
TEMPLATES = (
    "I bought this {product} in {city} and it {verdict}.",
    "Picked up a {product} while visiting {city}; honestly it {verdict}.",
    "The {product} I got from a small shop in {city} {verdict}.",
    "My sister sent me a {product} from {city}. It {verdict}.",
    "Ordered a {product} at the store in {city} last month and it {verdict}.",
)
INTRO = "In this task, you are given a short product review."
DEFINITIONS = {
    "sentiment": f"{INTRO} Classify the sentiment of the review as positive or negative.",
    "product": f"{INTRO} Answer with the product that the review is about.",
    "city": f"{INTRO} Answer with the city where the product was bought.",
}
SPLIT_SIZES = {"train": 200, "eval": 100, "demos": 20}


def _reviews(n: int, rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        positive = rng.random() < 0.5
        fields = {"product": rng.choice(PRODUCTS), "city": rng.choice(CITIES),
                  "verdict": rng.choice(PRAISE if positive else COMPLAINTS)}
        text = rng.choice(TEMPLATES).format(**fields)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "sentiment": "positive" if positive else "negative", **fields})
    return rows


def builtin_task_names() -> list[str]:
    """The review tasks and the open-domain general instruction set (`ssr.data.general`)."""
    return [*DEFINITIONS, "general"]


def builtin_task(name: str) -> Task:
    """The built-in task `name` with its deterministic train / eval / demos splits."""
    if name == "general":
        from ssr.data.general import general_task

        return general_task()
    if name not in DEFINITIONS:
        raise KeyError(f"unknown built-in task {name!r}; known: {builtin_task_names()}")
    # One review pool for all tasks (same seed): every task sees the same kind of input, and
    # the splits never share a review.
    total = sum(SPLIT_SIZES.values())
    pool = _reviews(total, random.Random(20240301))
    order = list(range(total))
    random.Random(sum(map(ord, name))).shuffle(order)  # each task its own split of the pool
    splits, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        splits[split] = [
            Instance(f"{name}-{split}-{k}", pool[i]["text"], pool[i][name], DEFINITIONS[name])
            for k, i in enumerate(order[start : start + size])
        ]
        start += size
    return Task(name, DEFINITIONS[name], splits["train"], splits["eval"], splits["demos"])
