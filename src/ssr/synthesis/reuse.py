"""The base model's sampled continuations, reused by runs that would draw exactly the same ones.

SSR and its ablations without refinement, with random selection or with supervised K-means run
the same step 1 on a given order and seed: the base model θ(0) continues the same ICL prompts with
the same sampling parameters and seed. Each run writes its continuations of a task to
`synthetic/generations/<task>.jsonl`, headed by a key that hashes everything the sampled text
depends on (the token ids of every prompt, the sampling parameters, the model settings, the
generation engine and dtype as resolved on this machine, the batch size). A run whose key equals
that of a sibling run's file (same parent directory, as in a sweep) reads the continuations
instead of sampling them again. As with stage 1's sharing (`runner.share_first_stage`), this
saves the repeated computation, and the ablations then differ only in what they ablate, not in
the draw of their samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from ssr.generation import Completion, Generator, SamplingParams
from ssr.io import atomic_path, write_jsonl

log = logging.getLogger(__name__)


def generation_key(identity: dict, prompts: list[list[int]], params: SamplingParams) -> str:
    """sha256 over the engine identity, every prompt's token ids and the sampling parameters."""
    payload = json.dumps({"identity": identity, "prompts": prompts, "params": asdict(params)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_generations(path: Path, key: str) -> list[list[Completion]] | None:
    """The continuations stored in `path` under `key`, or None (no file, another key, unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("key") != key:
                return None
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, AttributeError):
        return None
    if len(rows) != header.get("prompts"):
        return None
    return [[Completion(text, reason) for text, reason in row["samples"]] for row in rows]


class ReusedGenerations:
    """A Generator that stores what `generator` samples in `path`, and reads it back, from `path`
    or from the first of `siblings` stored under the same key, instead of sampling again."""

    def __init__(self, generator: Generator, path: Path, identity: dict, siblings: list[Path]):
        self.generator, self.path, self.identity, self.siblings = generator, Path(path), identity, siblings
        self.reused_from: Path | None = None

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        key = generation_key(self.identity, prompts, params)
        for source in [self.path, *(s for s in self.siblings if s != self.path)]:
            stored = read_generations(source, key)
            if stored is not None:
                if source != self.path:  # this run keeps its own copy: it stays whole if the sibling goes
                    with atomic_path(self.path) as tmp:
                        shutil.copyfile(source, tmp)
                    self.reused_from = source
                    log.info("%s: %d prompts' continuations reused from %s (the same key)", desc, len(prompts), source)
                return stored
        out = self.generator.generate(prompts, params, desc)
        header = {"key": key, "prompts": len(prompts), "identity": self.identity, "params": asdict(params)}
        write_jsonl(self.path, [header, *({"samples": [[str(c), c.finish_reason] for c in samples]} for samples in out)])
        return out
