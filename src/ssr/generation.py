"""Batched generation behind a small interface, so another engine (vLLM) can stand in.

The Hugging Face backend sorts prompts by length, left-pads each batch and decodes with the
KV cache; results come back in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    do_sample: bool = False  # greedy unless sampling is asked for
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_samples: int = 1
    ignore_eos: bool = False


class Generator(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[str]]:
        """For each prompt (token ids), `params.num_samples` continuations as text."""


class HFGenerator:
    """Generation with `model.generate` (works for PeftModel and plain models)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, show_progress: bool = True):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.show_progress = show_progress

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[str]]:
        if not prompts:
            return []
        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # long first: OOM shows early
        results: list[list[str]] = [[] for _ in prompts]
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.do_sample,
            num_return_sequences=params.num_samples,
            repetition_penalty=params.repetition_penalty,
            pad_token_id=tok.pad_token_id,
        )
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.ignore_eos:
            kwargs["suppress_tokens"] = [tok.eos_token_id]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not self.show_progress, leave=False):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
            for row, i in enumerate(batch):
                results[i] = [t.strip() for t in texts[row * params.num_samples : (row + 1) * params.num_samples]]
        if was_training:
            model.train()
        return results
