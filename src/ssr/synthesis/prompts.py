"""ICL prompts for synthesis: the task definition and ordered demonstration pairs, raw text.

    {definition}\n\nInput: {x_a}\nOutput: {y_a}\n\nInput: {x_b}\nOutput: {y_b}\n\nInput:

An open-domain task (each instance its own instruction) has no definition to give: as in the
release's Alpaca script, the prompt asks for new instructions and each demonstration shows its
own, `<noinput>` standing for an empty input:

    Create task instructions following examples below.\n\n
    Instruction: {i_a}\nInput: {x_a}\nOutput: {y_a}\n\nInstruction: {i_b}\nInput: ...\n\nInstruction:

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


OPEN_DOMAIN_HEADER = "Create task instructions following examples below.\n\n"
NO_INPUT = "<noinput>"


def format_demo(demo: Instance, with_output: bool) -> str:
    return f"Input: {demo.input}\nOutput: {demo.output}" if with_output else f"Input: {demo.input}"


def format_open_domain_demo(demo: Instance, with_output: bool) -> str:
    """`Instruction: ...\nInput: ...\nOutput: ...` of one open-domain demonstration."""
    text = f"Instruction: {demo.definition}\nInput: {demo.input if demo.input.strip() else NO_INPUT}"
    return f"{text}\nOutput: {demo.output}" if with_output else text


def build_icl_prompts(
    definition: str,
    demos: list[Instance],
    n_shots: int = 2,
    max_prompts: int | None = None,
    with_outputs: bool = True,
    seed: int = 0,
    open_domain: bool = False,
) -> list[IclPrompt]:
    """All ordered `n_shots`-tuples of distinct demos (a seeded sample of `max_prompts` if set);
    `open_domain`: the instruction-writing prompt (the definition is not used)."""
    if len(demos) < n_shots:
        raise ValueError(f"need at least {n_shots} demonstrations, got {len(demos)}")
    tuples = list(itertools.permutations(range(len(demos)), n_shots))
    if max_prompts is not None and max_prompts < len(tuples):
        tuples = sorted(random.Random(seed).sample(tuples, max_prompts))
    prompts = []
    for pid, tup in enumerate(tuples):
        if open_domain:
            shots = "\n\n".join(format_open_domain_demo(demos[i], with_outputs) for i in tup)
            text = f"{OPEN_DOMAIN_HEADER}{shots}\n\nInstruction:"
        else:
            shots = "\n\n".join(format_demo(demos[i], with_outputs) for i in tup)
            text = f"{definition}\n\n{shots}\n\nInput:"
        prompts.append(IclPrompt(pid, tuple(demos[i].id for i in tup), text))
    return prompts
