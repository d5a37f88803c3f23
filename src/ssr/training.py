"""One LoRA fine-tuning stage: a plain accelerate loop that reads top to bottom.

Why not `transformers.Trainer`: a stage here is a short, fixed recipe (response-only loss,
fresh AdamW + cosine schedule, clipping, accumulation) run many times in one process over
one adapter; Trainer's checkpointing, logging integrations and its own state handling add
nothing but surface. The loop uses `accelerate` for devices and distributed data parallel,
so it runs unchanged under `accelerate launch`.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from contextlib import nullcontext
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers import modeling_utils

from ssr.config import TrainConfig
from ssr.models.dtype import resolve_autocast
from ssr.models.templates import PromptTemplate

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@lru_cache(maxsize=1)
def get_accelerator() -> Accelerator:
    """One Accelerator per process (its state is global); bf16 is handled per stage by autocast."""
    return Accelerator()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def tokenize_rows(rows: list[dict], template: PromptTemplate, max_source: int, max_target: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; labels mask the prompt so only the response is learnt."""
    examples = []
    for row in rows:
        prompt = template.prompt_ids(row["definition"], row["input"], max_source)
        target = template.target_ids(row["output"], max_target)
        examples.append((prompt + target, [IGNORE_INDEX] * len(prompt) + target))
    return examples


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar-length rows: shuffle, sort inside mega-batches, shuffle batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 16
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def supports_sparse_logits(model) -> bool:
    """Whether the model can project only selected positions onto the vocabulary
    (`logits_to_keep` with a boolean mask, transformers >= 5)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hasattr(modeling_utils, "slice_logits_to_keep") and "logits_to_keep" in inspect.signature(inner.forward).parameters


def causal_lm_loss(model, batch: dict[str, torch.Tensor], sparse_logits: bool) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens.

    With `sparse_logits`, the vocabulary projection (~20 % of SmolLM2's compute, and the
    largest activation) runs only at positions that predict a response token; the loss is
    the same as `model(**batch).loss` (a test checks it).
    """
    if not sparse_logits:
        return model(**batch).loss
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position p predicts token p + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:][keep[:, :-1]])


def train_stage(model, template: PromptTemplate, rows: list[dict], cfg: TrainConfig, seed: int, desc: str = "train",
                penalty: Callable[[], torch.Tensor] | None = None, bf16: bool | None = None) -> dict:
    """Fine-tune the trainable (LoRA) parameters of `model` on `rows`; returns stage statistics.

    A fresh AdamW and schedule every stage (the paper's setting). Deterministic on CPU for a
    fixed seed: data order and dropout both derive from it. `penalty`, when given, is a loss
    term the method supplies (a regulariser over the trainable weights), added once per
    optimizer step. `bf16`: autocast on or off as the run resolved `train.bf16` (once per run,
    see `ModelState.train_bf16`); None resolves it here.
    """
    accelerator = get_accelerator()
    seed_everything(seed)
    examples = tokenize_rows(rows, template, cfg.max_source_length, cfg.max_target_length)
    world = accelerator.num_processes
    if len(examples) < world:  # a process without batches would never reach total_steps
        raise ValueError(f"{desc}: {len(examples)} training rows for {world} processes; the plan checks should have refused this")
    micro = cfg.batch_size
    per_epoch_batches = math.ceil(len(examples) / (micro * world))
    steps_per_epoch = max(1, math.ceil(per_epoch_batches / cfg.grad_accum))
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if bf16 is None:
        bf16 = resolve_autocast(cfg.bf16)
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    pad_id = template.tokenizer.pad_token_id
    sparse_logits = supports_sparse_logits(model)

    model.train()
    step, micro_step, tokens, last_loss, last_penalty = 0, 0, 0, float("nan"), None
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, unit="step", leave=False)
    epoch = 0
    while step < total_steps:
        if cfg.group_by_length:
            batches = length_grouped_batches([len(x) for x, _ in examples], micro, seed + epoch)
        else:
            batches = shuffled_batches(len(examples), micro, seed + epoch)
        batches = batches[accelerator.process_index :: world]  # data parallel shard
        for batch_index, batch in enumerate(batches):
            is_step = (micro_step + 1) % cfg.grad_accum == 0 or batch_index == len(batches) - 1
            inputs = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in batch], pad_id).items()}
            sync = nullcontext() if is_step else accelerator.no_sync(model)
            with sync:
                with autocast:
                    loss = causal_lm_loss(model, inputs, sparse_logits)
                    extra = penalty() if penalty is not None else None
                # Backward outside autocast (PyTorch's advice: each op's backward runs in its forward
                # dtype anyway); inside it, gradient hooks compute in bf16 and PEFT's OSF projection
                # hook fails ("hook has changed the type of value"). Each micro-batch carries
                # 1/grad_accum of the penalty: once per step in total.
                accelerator.backward((loss if extra is None else loss + extra) / cfg.grad_accum)
            tokens += int(inputs["attention_mask"].sum())
            micro_step += 1
            if not is_step:
                continue
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            micro_step = 0
            last_loss = float(loss.detach())
            last_penalty = None if extra is None else float(extra.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    accelerator.free_memory()  # drop the accelerator's references to this stage's optimizer
    model.eval()
    seconds = time.perf_counter() - started
    return {
        "examples": len(examples),
        "steps": step,
        "epochs": cfg.epochs,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "final_loss": last_loss,
        **({} if penalty is None else {"final_penalty": last_penalty}),
        "bf16": bf16,
    }
