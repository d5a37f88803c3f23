"""Documents of the `ssr_general_mc` lm-eval task, built from the general set's held-out split."""

from __future__ import annotations

import random

N_CHOICES = 4


def general_mc_docs(seed: int = 0) -> list[dict]:
    """One document per held-out general instruction: the query, four choices (the reference
    and three other held-out answers, distinct), the reference's index. Deterministic."""
    from ssr.data.general import general_task
    from ssr.models.templates import query_text

    evals = general_task().eval
    rng = random.Random(seed)
    docs = []
    for inst in evals:
        others = sorted({e.output for e in evals} - {inst.output})
        choices = rng.sample(others, N_CHOICES - 1) + [inst.output]
        rng.shuffle(choices)
        docs.append({"query": query_text(inst.definition, inst.input), "choices": choices,
                     "label": choices.index(inst.output)})
    return docs


def load_general_mc(**kwargs):
    """lm-eval's `custom_dataset`: a DatasetDict with the documents as its test split."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(general_mc_docs())})
