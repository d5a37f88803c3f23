"""Seeded, class-stratified subsets of a split (training cap, evaluation cap, demonstration pool).

Files are often sorted (the shared sa split is sorted by label), so "the first N rows" of a
split can hold one class only. A subset is instead a seeded random sample; when a task's
outputs take few distinct values (a classification task), it is stratified by output so
every class keeps its share (the release's subsets take half of each class of sa). What is
kept stays in file order.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

from ssr.data.task import Instance
from ssr.selection import proportional_quotas

T = TypeVar("T", bound=Instance)

MAX_CLASSES = 20
"""A task whose outputs take at most this many distinct values, each on two rows or more on
average, is treated as a classification task and sampled by class."""


def is_classification(outputs: Sequence[str]) -> bool:
    """Whether outputs take few distinct values (stratify) rather than being free text."""
    distinct = len(set(outputs))
    return distinct <= MAX_CLASSES and 2 * distinct <= len(outputs)


def sample_subset(instances: list[T], n: int | None, seed: int | str) -> list[T]:
    """`n` of `instances`, a seeded sample (stratified by output for classification tasks),
    in file order. All of them when `n` is None or not smaller than the split."""
    if n is None or n >= len(instances):
        return list(instances)
    rng = random.Random(seed)
    outputs = [inst.output.strip() for inst in instances]
    if not is_classification(outputs):
        return [instances[i] for i in sorted(rng.sample(range(len(instances)), n))]
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, out in enumerate(outputs):
        by_class[out].append(i)
    classes = sorted(by_class)
    rng.shuffle(classes)  # the class that gets a rounding remainder is drawn, not alphabetical
    quotas = proportional_quotas([len(by_class[c]) for c in classes], n)
    chosen = [i for c, q in zip(classes, quotas) for i in rng.sample(by_class[c], q)]
    return [instances[i] for i in sorted(chosen)]


def subset_seed(seed: int, task: str, split: str) -> str:
    """One seed per (run seed, task, split): subsets of different splits are independent."""
    return f"{seed}:{task}:{split}"
