"""Regularisation baselines (the paper's L2 and EWC): a loss term the method hands the trainer.

Both penalise moving the trainable (adapter) weights away from where the previous stage left
them: λ Σ w (p − p_prev)², with w = 1 (L2) or the diagonal Fisher of the previous stage's data
(EWC). What a later stage needs is written right after the stage that produces it, as one
resumable step of the run:

    <out>/regularizer/<i>-<task>.safetensors   anchor.<param> = p_prev, fisher.<param> (EWC)

A killed run finds the file and builds the same penalty from it; a missing file is recomputed
from the stage's saved adapter and training rows, so resuming gives the uninterrupted result.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from ssr.config import MethodConfig, TrainConfig
from ssr.io import atomic_path, read_jsonl
from ssr.models.templates import PromptTemplate
from ssr.training import causal_lm_loss, collate, supports_sparse_logits, tokenize_rows

if TYPE_CHECKING:
    from ssr.methods.base import Stage
    from ssr.runner import RunContext


class QuadraticPenalty:
    """λ Σ w (p − p_prev)² over `params`; w = 1 where no weights are given (L2)."""

    def __init__(self, params: list[torch.Tensor], anchors: list[torch.Tensor], weights: list[torch.Tensor] | None, lam: float):
        self.params = params
        self.anchors = [a.to(p.device, p.dtype) for a, p in zip(anchors, params)]
        self.weights = None if weights is None else [w.to(p.device, p.dtype) for w, p in zip(weights, params)]
        self.lam = lam

    def __call__(self) -> torch.Tensor:
        terms = [(p - a).pow(2) for p, a in zip(self.params, self.anchors)]
        if self.weights is not None:
            terms = [w * t for w, t in zip(self.weights, terms)]
        return self.lam * torch.stack([t.sum() for t in terms]).sum()


def fisher_diagonal(model, params: dict[str, torch.Tensor], template: PromptTemplate, rows: list[dict], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of `params`: the mean over `rows`, one row per batch, of the
    squared gradient of that row's response loss (dropout off)."""
    examples = tokenize_rows(rows, template, cfg.max_source_length, cfg.max_target_length)
    device = next(iter(params.values())).device
    sparse = supports_sparse_logits(model)
    was_training = model.training
    model.eval()
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    for example in examples:
        batch = {k: v.to(device) for k, v in collate([example], template.tokenizer.pad_token_id).items()}
        grads = torch.autograd.grad(causal_lm_loss(model, batch, sparse), list(params.values()))
        for name, g in zip(params, grads):
            fisher[name] += g.detach().float().pow(2)
    model.train(was_training)
    return {name: f / len(examples) for name, f in fisher.items()}


class Regularizer:
    """L2 (`kind="l2"`) or EWC (`kind="ewc"`): keeps p_prev (and the Fisher) per stage."""

    folder = "regularizer"

    def __init__(self, kind: str, cfg: MethodConfig, train: TrainConfig, seed: int):
        self.kind, self.cfg, self.train, self.seed = kind, cfg, train, seed

    def state_path(self, ctx: RunContext, stage: Stage) -> Path:
        return ctx.run_dir / self.folder / f"{stage.name}.safetensors"

    def pending_after(self, stage: Stage, ctx: RunContext, last: bool) -> bool:
        """Whether the state a later stage needs is still to be written (none after the last)."""
        return not last and not self.state_path(ctx, stage).exists()

    def after_stage(self, stage: Stage, ctx: RunContext, model, params: dict[str, torch.nn.Parameter],
                    previous: Stage | None) -> None:
        """Write p_prev (and, for EWC, the Fisher of the stage's training rows) atomically."""
        state = {f"anchor.{n}": p.detach().float().cpu().contiguous() for n, p in params.items()}
        if self.kind == "ewc":
            rows = read_jsonl(ctx.stage_dir(stage) / "train.jsonl")
            rng = random.Random(self.seed + stage.index)
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), min(self.cfg.fisher_samples, len(rows))))]
            flags = {n: p.requires_grad for n, p in params.items()}
            for p in params.values():  # a model reloaded for evaluation has them frozen
                p.requires_grad_(True)
            try:
                fisher = fisher_diagonal(model, params, ctx.models.template, rows, self.train)
            finally:
                for n, p in params.items():
                    p.requires_grad_(flags[n])
            if self.cfg.fisher_accumulate and previous is not None:
                before = load_file(self.state_path(ctx, previous))
                fisher = {n: f + before[f"fisher.{n}"].to(f.device) for n, f in fisher.items()}  # the file is on the CPU
            state |= {f"fisher.{n}": f.cpu().contiguous() for n, f in fisher.items()}
        with atomic_path(self.state_path(ctx, stage)) as tmp:
            save_file(state, str(tmp), metadata={"kind": self.kind, "stage": stage.name})

    def penalty(self, ctx: RunContext, previous: Stage, params: dict[str, torch.nn.Parameter]) -> QuadraticPenalty:
        """The loss term of the stage after `previous`, over the same named weights."""
        state = load_file(self.state_path(ctx, previous))
        names = list(params)
        missing = [n for n in names if f"anchor.{n}" not in state]
        if missing:
            raise RuntimeError(f"{self.state_path(ctx, previous)} lacks {len(missing)} trainable weights, e.g. {missing[0]}")
        weights = [state[f"fisher.{n}"] for n in names] if self.kind == "ewc" else None
        return QuadraticPenalty([params[n] for n in names], [state[f"anchor.{n}"] for n in names], weights, self.cfg.reg_lambda)


def regularizer_for(cfg, seed: int) -> Regularizer | None:
    """The regulariser a run config asks for (`method.regularizer`, or the `l2` / `ewc` method)."""
    kind = cfg.method.regularizer_or_default
    return None if kind == "none" else Regularizer(kind, cfg.method, cfg.train, seed)
