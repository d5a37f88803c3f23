"""The task model: a named task with a definition (instruction) and (input, output) instances."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instance:
    """One example. `references` holds every acceptable output for scoring (output included)."""

    id: str
    input: str
    output: str
    definition: str
    references: tuple[str, ...] = ()

    @property
    def all_references(self) -> tuple[str, ...]:
        return self.references or (self.output,)


@dataclass
class Task:
    name: str
    definition: str
    train: list[Instance] = field(default_factory=list)
    eval: list[Instance] = field(default_factory=list)
    demos: list[Instance] = field(default_factory=list)
    """The small pool of real demonstrations SSR may keep (20 in the paper)."""
    skipped_rows: int = 0
    max_new_tokens: int = 128
    """Answer length for generation: the task's `max_new_tokens`, else the run's `eval.max_new_tokens`."""


def training_row(instance: Instance, task: str, source: str, **extra) -> dict:
    """A row of a stage's train.jsonl: what is learnt, and where it came from."""
    return {
        "task": task,
        "source": source,  # new | replay | synthetic
        "id": instance.id,
        "definition": instance.definition,
        "input": instance.input,
        "output": instance.output,
        **extra,
    }
