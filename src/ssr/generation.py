"""Batched generation behind a small interface, so another engine (vLLM) can stand in.

The Hugging Face backend sorts prompts by length, left-pads each batch and decodes with the
KV cache; results come back in the caller's order. Each continuation is a `Completion`: its
text, and whether it ended by EOS (`stop`) or by running out of tokens (`length`), as vLLM's
outputs say. Sampling runs through `GumbelTopP`, an
exact nucleus sampler that avoids sorting the whole vocabulary at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    do_sample: bool = False  # greedy unless sampling is asked for
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_samples: int = 1
    ignore_eos: bool = False
    seed: int | None = None
    """Seeds sampling (both backends), so a rerun draws the same samples."""
    max_total_tokens: int | None = None
    """Prompt + continuation tokens at most (the context rule of synthesis); None = no bound
    beyond `max_new_tokens`."""


class Completion(str):
    """A continuation's text (a `str`, so callers that want text need nothing else) and why it
    ended: `finish_reason` is `stop` (EOS) or `length` (the token budget ran out, so the text
    may be cut mid-instance)."""

    finish_reason: str

    def __new__(cls, text: str, finish_reason: str = "stop") -> Completion:
        obj = super().__new__(cls, text)
        obj.finish_reason = finish_reason
        return obj

    @property
    def cut(self) -> bool:
        return self.finish_reason == "length"


class Generator(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        """For each prompt (token ids), `params.num_samples` continuations, each a `Completion`."""


class GumbelTopP(LogitsProcessor):
    """Temperature + top-p (nucleus) sampling as a logits processor for greedy decoding.

    The nucleus is the same as transformers' `TopPLogitsWarper` keeps: the most likely tokens
    until their mass reaches `top_p` (a token stays while the mass before it is < top_p).
    Adding Gumbel noise to the kept log-probabilities and taking the argmax draws a token with
    exactly the nucleus-renormalised probabilities (the Gumbel-max trick). Why: on CPU, sorting
    the 49k-token vocabulary and `torch.multinomial` per step took ~20 % of synthesis time;
    the nucleus almost always lies in the top `k` tokens, so only those are sorted (`topk`),
    with a full sort for a batch whose nucleus reaches past them. Noise comes from torch's
    global generator, so `torch.manual_seed` makes it reproducible.
    """

    def __init__(self, temperature: float, top_p: float, k: int = 256):
        self.temperature, self.top_p, self.k = temperature, top_p, k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logprobs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p >= 1.0:  # no nucleus: every token (rounding must not drop the tail)
            gumbel = -torch.empty_like(logprobs).exponential_().log()
            return (logprobs + gumbel).to(scores.dtype)
        k = min(self.k, logprobs.shape[-1])
        while True:
            top, index = logprobs.topk(k, dim=-1)  # sorted, most likely first
            mass_before = top.exp().cumsum(-1) - top.exp()
            keep = mass_before < self.top_p
            if k == logprobs.shape[-1] or not keep[:, -1].any():
                break
            k = logprobs.shape[-1]  # the nucleus may go past the top k: take the whole vocabulary
        gumbel = -torch.empty_like(top).exponential_().log()
        noisy = torch.where(keep, top + gumbel, torch.full_like(top, -float("inf")))
        return torch.full_like(scores, -float("inf")).scatter_(1, index, noisy.to(scores.dtype))


class RepetitionPenaltyOverPrompt(LogitsProcessor):
    """transformers' repetition penalty (divide a positive logit, multiply a negative one, for
    every token already in the sequence), blind to each row's left padding.

    transformers' own processor counts the pad tokens of a left-padded batch as part of the
    sequence; where the pad token is the EOS token (SmolLM2, and any tokenizer given EOS as
    pad), every padded row had its EOS penalised, so batched generations ran on longer than the
    same prompt alone (measured on SmolLM2 ICL synthesis: 101 of 120 generations hit the length
    limit in batches, against 51 of 120 on vLLM, which does not pad).
    """

    def __init__(self, penalty: float, pad_lengths: torch.Tensor):
        self.penalty, self.pad_lengths = penalty, pad_lengths

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        real = (positions[None, :] >= self.pad_lengths.to(input_ids.device)[:, None]).to(scores.dtype)
        seen = torch.zeros_like(scores).scatter_add_(1, input_ids, real) > 0
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


def _eos_ids(model, tokenizer) -> torch.Tensor:
    """Every token id that ends a generation: the tokenizer's EOS and the model's own."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return torch.tensor(sorted(i for i in ids if i is not None), dtype=torch.long)


class HFGenerator:
    """Generation with `model.generate` (works for PeftModel and plain models)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, show_progress: bool = True):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.show_progress = show_progress

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        if not prompts:
            return []
        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        # Every sample is a row of its own (samples of one prompt stay side by side in a batch);
        # long prompts first, so that running out of memory shows at once.
        rows = [i for i in sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) for _ in range(params.num_samples)]
        results: list[list[Completion]] = [[] for _ in prompts]
        eos_ids = _eos_ids(model, tok)
        kwargs = dict(
            do_sample=False,  # sampling, when asked for, is the Gumbel-max processor's argmax
            pad_token_id=tok.pad_token_id,
            temperature=None, top_p=None, top_k=None,
        )
        sampler = []
        if params.do_sample:
            if params.seed is not None:
                torch.manual_seed(params.seed)  # the Gumbel noise comes from torch's global generator
            sampler = [GumbelTopP(params.temperature, params.top_p)]
        if params.ignore_eos:
            kwargs["suppress_tokens"] = [tok.eos_token_id]
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not self.show_progress, leave=False):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            # The total bound counts the batch's longest prompt (rows are sorted by length, so
            # the others lose few tokens): no row goes past it.
            budget = params.max_new_tokens
            if params.max_total_tokens is not None:
                budget = min(budget, params.max_total_tokens - width)
            if budget < 1:
                for i in batch:
                    results[i].append(Completion("", "length"))
                continue
            penalty = []
            if params.repetition_penalty != 1.0:  # before temperature and top-p, as in transformers
                pad_lengths = torch.tensor([width - len(prompts[i]) for i in batch])
                penalty = [RepetitionPenaltyOverPrompt(params.repetition_penalty, pad_lengths)]
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=budget,
                                 logits_processor=LogitsProcessorList(penalty + sampler), **kwargs)
            new_tokens = out[:, width:]
            ends = torch.isin(new_tokens, eos_ids.to(new_tokens.device)).any(dim=1).tolist()
            texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text, stopped in zip(batch, texts, ends):
                results[i].append(Completion(text.strip(), "stop" if stopped else "length"))
        if was_training:
            model.train()
        return results
