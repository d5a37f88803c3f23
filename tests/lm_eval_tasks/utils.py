"""Data of the local lm-eval test tasks: JSON Lines files beside this module (lm-eval resolves
`!function utils.<name>` against this folder, so the tasks run from any working directory)."""

import json
from pathlib import Path

from datasets import Dataset, DatasetDict

HERE = Path(__file__).resolve().parent


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_choice(**kwargs) -> DatasetDict:
    """ssr_toy_choice: a question, its answer choices and the index of the right one."""
    return DatasetDict({"test": Dataset.from_list(_rows("toy_choice.jsonl"))})


def load_text(**kwargs) -> DatasetDict:
    """ssr_toy_ppl: plain texts scored by their log-likelihood."""
    return DatasetDict({"test": Dataset.from_list(_rows("toy_text.jsonl"))})
