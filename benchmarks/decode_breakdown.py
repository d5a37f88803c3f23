"""Where batched generation time goes on this machine: prefill against decode steps, batch 1
against batch 24, on the throughput benchmark's ICL prompts (`python benchmarks/decode_breakdown.py`).
Greedy with a fixed number of new tokens, so both batch sizes do the same work per row."""

from __future__ import annotations

import time

import torch

from ssr.data.builtin import builtin_task
from ssr.models import load_base_model, load_tokenizer
from ssr.synthesis import build_icl_prompts

MODEL = "smollm2-135m"


@torch.inference_mode()
def generate_seconds(model, tokenizer, rows: list[list[int]], new_tokens: int) -> float:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - start


def main() -> None:
    tokenizer, model = load_tokenizer(MODEL), load_base_model(MODEL)
    task = builtin_task("product")
    prompts = [tokenizer(p.text)["input_ids"] for p in build_icl_prompts(task.definition, task.demos, max_prompts=24, seed=0)]
    generate_seconds(model, tokenizer, prompts[:2], 2)  # warm-up
    for batch in (1, 24):
        rows = prompts[:batch]
        prefill = generate_seconds(model, tokenizer, rows, 1)
        step = (generate_seconds(model, tokenizer, rows, 33) - prefill) / 32
        print(f"batch {batch}: prefill {prefill * 1000:.0f} ms ({sum(map(len, rows))} prompt tokens), "
              f"decode step {step * 1000:.0f} ms -> {batch / step:.1f} tokens/s while decoding")


if __name__ == "__main__":
    main()
