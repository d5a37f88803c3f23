"""ICL prompts for synthesis: the task definition and ordered demonstration pairs, raw text.

    {definition}\n\nInput: {x_a}\nOutput: {y_a}\n\nInput: {x_b}\nOutput: {y_b}\n\nInput:

Every ordered n-tuple of distinct demonstrations gives one prompt (20 x 19 = 380 for pairs).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from ssr.data.task import Instance


@dataclass(frozen=True)
class IclPrompt:
    id: int
    demo_ids: tuple[str, ...]
    text: str


def format_demo(demo: Instance, with_output: bool) -> str:
    return f"Input: {demo.input}\nOutput: {demo.output}" if with_output else f"Input: {demo.input}"


def build_icl_prompts(
    definition: str,
    demos: list[Instance],
    n_shots: int = 2,
    max_prompts: int | None = None,
    with_outputs: bool = True,
    seed: int = 0,
) -> list[IclPrompt]:
    """All ordered `n_shots`-tuples of distinct demos (a seeded sample of `max_prompts` if set)."""
    if len(demos) < n_shots:
        raise ValueError(f"need at least {n_shots} demonstrations, got {len(demos)}")
    tuples = list(itertools.permutations(range(len(demos)), n_shots))
    if max_prompts is not None and max_prompts < len(tuples):
        tuples = sorted(random.Random(seed).sample(tuples, max_prompts))
    prompts = []
    for pid, tup in enumerate(tuples):
        shots = "\n\n".join(format_demo(demos[i], with_outputs) for i in tup)
        prompts.append(IclPrompt(pid, tuple(demos[i].id for i in tup), f"{definition}\n\n{shots}\n\nInput:"))
    return prompts
