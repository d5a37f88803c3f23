"""One LoRA fine-tuning stage: a plain accelerate loop that reads top to bottom.

Why not `transformers.Trainer`: a stage here is a short, fixed recipe (response-only loss,
fresh AdamW + cosine schedule, clipping, accumulation) run many times in one process over
one adapter; Trainer's checkpointing, logging integrations and its own state handling add
nothing but surface. The loop uses `accelerate` for devices and distributed data parallel,
so it runs unchanged under `accelerate launch`.

Under N processes a step is the same computation as on one process with `grad_accum` x N:
the epoch's micro-batches are one list, an optimizer step takes the next `grad_accum` x N of
them (process p the p-th of every N), gradients are averaged over the processes, and each
micro-batch's dropout is seeded by its place in that list, not by the process that runs it.
So `batch_size` 4, `grad_accum` 2 on one process and `batch_size` 4, `grad_accum` 1 on two
give the same adapter up to floating-point summation order (a test checks it).
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler

from ssr.config import TrainConfig
from ssr.distributed import get_accelerator
from ssr.models.dtype import resolve_autocast
from ssr.models.templates import PromptTemplate

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


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
    (`logits_to_keep` given as a tensor of positions)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def causal_lm_loss(model, batch: dict[str, torch.Tensor], sparse_logits: bool) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens.

    With `sparse_logits`, the vocabulary projection (~20 % of SmolLM2's compute, and the
    largest activation) runs only at the positions that predict a response token in some row
    of the batch (`logits_to_keep` takes one list of positions for the whole batch); the loss
    is the same as `model(**batch).loss` (a test checks it).
    """
    if not sparse_logits:
        return model(**batch).loss
    targets = batch["labels"][:, 1:]  # position p predicts token p + 1
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=positions).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets[:, positions].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def micro_batch_seed(seed: int, epoch: int, index: int) -> int:
    """The dropout seed of the `index`-th micro-batch of an epoch: the same whichever process runs it."""
    return (seed * 1_000_003 + epoch * 100_003 + index) % 2**63


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (less
    memory, ~30 % more compute). Non-reentrant checkpointing restores the RNG state, so dropout
    draws the same masks and the result is unchanged; with frozen embeddings (LoRA) the inputs
    are made to require grad so that the checkpointed segments have a gradient to carry."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "is_gradient_checkpointing", False):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inner.enable_input_require_grads()
    inner.config.use_cache = False  # a cache is useless in training and transformers warns with checkpointing


def uses_deepspeed(accelerator) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


def _configure_deepspeed(accelerator, cfg: TrainConfig) -> None:
    """DeepSpeed reads batch, accumulation and clipping from its config (accelerate fills `auto`
    values from a dataloader, which this loop does not use): set them from the stage's config."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = cfg.max_grad_norm


def train_stage(model, template: PromptTemplate, rows: list[dict], cfg: TrainConfig, seed: int, desc: str = "train",
                penalty: Callable[[], torch.Tensor] | None = None, bf16: bool | None = None) -> dict:
    """Fine-tune the trainable (LoRA) parameters of `model` on `rows`; returns stage statistics.

    A fresh AdamW and schedule every stage (the paper's setting). Deterministic on CPU for a
    fixed seed: data order and dropout both derive from it, and neither depends on how many
    processes share the work (see the module docstring). `penalty`, when given, is a loss
    term the method supplies (a regulariser over the trainable weights), added once per
    optimizer step. Every process of a launch calls this with the same rows. `bf16`: autocast on
    or off as the run resolved `train.bf16` (once per run, see `ModelState.train_bf16`); None
    resolves it here.
    """
    accelerator = get_accelerator()
    seed_everything(seed)
    examples = tokenize_rows(rows, template, cfg.max_source_length, cfg.max_target_length)
    if not examples:
        raise ValueError(f"{desc}: no training rows; the plan checks should have refused this")
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = cfg.batch_size
    per_step = cfg.grad_accum * world  # micro-batches per optimizer step, over all processes
    steps_per_epoch = max(1, math.ceil(math.ceil(len(examples) / micro) / per_step))
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))

    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    deepspeed = uses_deepspeed(accelerator)
    if deepspeed:
        _configure_deepspeed(accelerator, cfg)
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
    step, tokens, last_losses, last_penalty = 0, 0, [], None
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, unit="step", leave=False, disable=not accelerator.is_main_process)
    epoch = 0
    while step < total_steps:
        if cfg.group_by_length:
            batches = length_grouped_batches([len(x) for x, _ in examples], micro, seed + epoch)
        else:
            batches = shuffled_batches(len(examples), micro, seed + epoch)
        for first in range(0, len(batches), per_step):
            group = batches[first : first + per_step]
            rounds = math.ceil(len(group) / world)  # micro-batches per process this step (the same on all)
            step_losses = []
            for j in range(rounds):
                position = j * world + rank
                # A process left without a micro-batch in a short last step runs a stand-in with
                # weight 0: it adds nothing, and keeps the processes' gradient all-reduces matched.
                weight = 1.0 if position < len(group) else 0.0
                batch = group[position] if weight else group[0]
                torch.manual_seed(micro_batch_seed(seed, epoch, first + position))  # dropout follows the micro-batch
                inputs = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in batch], pad_id).items()}
                boundary = j == rounds - 1
                sync = nullcontext() if boundary or deepspeed else accelerator.no_sync(model)
                with sync:
                    with autocast:
                        loss = causal_lm_loss(model, inputs, sparse_logits)
                        extra = penalty() if penalty is not None else None
                    # Backward outside autocast (PyTorch's advice: each op's backward runs in its
                    # forward dtype anyway); inside it, gradient hooks compute in bf16 and PEFT's
                    # OSF projection hook fails ("hook has changed the type of value").
                    total = (loss if extra is None else loss + extra) * weight
                    if deepspeed:  # the engine scales by 1/grad_accum, reduces, clips and steps at the boundary
                        model.set_gradient_accumulation_boundary(boundary)
                        model.backward(total)
                        if boundary:
                            model.step()
                    else:  # each micro-batch carries 1/grad_accum of the penalty: once per step in total
                        accelerator.backward(total / cfg.grad_accum)
                if weight:
                    tokens += int(inputs["attention_mask"].sum())
                    step_losses.append(float(loss.detach()))
                    last_penalty = None if extra is None else float(extra.detach())
            if not deepspeed:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
            scheduler.step()  # the engine steps the optimizer, not this schedule (it is not handed to DeepSpeed)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_losses = step_losses
            bar.update(1)
            bar.set_postfix(loss=f"{sum(step_losses) / max(len(step_losses), 1):.3f}")
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    accelerator.free_memory()  # drop the accelerator's references to this stage's optimizer (and engine)
    model.eval()
    seconds = time.perf_counter() - started
    if world > 1:  # the statistics of the whole step, not of this process's share
        from accelerate.utils import gather_object

        tokens = sum(gather_object([tokens]))
        last_losses = gather_object(last_losses)
    last_loss = sum(last_losses) / len(last_losses)  # never empty: the main process has a real micro-batch every step
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
