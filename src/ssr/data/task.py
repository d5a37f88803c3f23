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
    language: str = "en"
    """Language of the references (`tasks[].language`, else detected): `en` is scored with
    rouge-score's English tokenizer and stemmer, anything else with Unicode words."""
    open_domain: bool = False
    """Each instance carries its own instruction (`Instance.definition`); `definition` is a label."""
    learnt: bool = False
    """Learnt before stage 1 (stage 0): evaluated and rehearsed, never trained."""


NON_ENGLISH_SHARE = 0.1
"""References count as non-English when at least this share of them holds a non-ASCII letter
(measured on the shared SuperNI split: en->es translation 77 %, the English tasks <= 0.2 %)."""


def detect_language(instances: list[Instance]) -> str:
    """`en`, or `non-en` when many references contain letters outside ASCII (é, ñ, ü, 日...)."""
    refs = [ref for inst in instances for ref in inst.all_references]
    if not refs:
        return "en"
    accented = sum(any(ch.isalpha() and not ch.isascii() for ch in ref) for ref in refs)
    return "non-en" if accented >= NON_ENGLISH_SHARE * len(refs) else "en"


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
