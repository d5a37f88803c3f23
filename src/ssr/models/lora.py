"""PEFT adapters over the base model: attach (LoRA, or OSF for `method.name: osf`), load,
merge, save. Which adapter a run uses and whether it is merged between stages is decided here."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, OSFConfig, PeftModel, get_peft_model

from ssr.config import LoraSettings, RunConfig
from ssr.errors import ConfigError
from ssr.io import atomic_path


def attach_lora(base, settings: LoraSettings, seed: int) -> PeftModel:
    """A new trainable LoRA adapter on `base` (initialisation seeded)."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def osf_effective_rank(cfg: RunConfig, stage_index: int) -> float:
    """Fraction of each weight's singular directions OSF freezes in stage `stage_index` (1-based):
    `method.osf_effective_rank`, or evenly spaced from 0.3 to 0.7 (PEFT's example: 0.3/0.5/0.7)."""
    if cfg.method.osf_effective_rank is not None:
        return cfg.method.osf_effective_rank[stage_index - 1]
    n = sum(not t.learnt for t in cfg.tasks)  # one rank per trained stage
    return 0.3 if n == 1 else round(0.3 + 0.4 * (stage_index - 1) / (n - 1), 4)


def attach_osf(base, targets: list[str], effective_rank: float) -> PeftModel:
    """A new OSF adapter on `base`: each target weight's top singular directions are frozen,
    the rest is trained with gradients projected orthogonal to them (deterministic: an SVD)."""
    config = OSFConfig(target_modules=list(targets), effective_rank=effective_rank, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def attach_adapter(base, cfg: RunConfig, stage_index: int, seed: int) -> PeftModel:
    """The run's adapter type for a new stage: OSF for `osf` (on the same targets as LoRA), else LoRA."""
    if not uses_lora(cfg):
        return attach_osf(base, cfg.train.lora.targets, osf_effective_rank(cfg, stage_index))
    return attach_lora(base, cfg.train.lora, seed)


def uses_lora(cfg: RunConfig) -> bool:
    """Whether the run's adapters are LoRA (what `attach_adapter` attaches; vLLM serves only these)."""
    return cfg.method.name != "osf"


def merges_between_stages(cfg: RunConfig) -> bool:
    """Whether each stage's adapter is merged into the weights before the next one is attached:
    `train.adapter: new`, and always for OSF (its subspaces come from the current weights)."""
    return cfg.train.adapter == "new" or cfg.method.name == "osf"


def is_adapter_weight(name: str) -> bool:
    """Whether a parameter name of a PEFT model is a trainable adapter weight (LoRA or OSF)."""
    return "lora_" in name or "osf_svd_params" in name


def load_adapter(base, path: str | Path, trainable: bool, allow_pickle: bool = False) -> PeftModel:
    """Load a saved adapter onto `base`; only from safetensors unless `allow_pickle`."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    if not allow_pickle and not (path / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{path}: no adapter_model.safetensors; pickle weights are loaded only with "
                          "model.allow_pickle: true")
    return PeftModel.from_pretrained(base, str(path), is_trainable=trainable)


def save_adapter(model: PeftModel, path: str | Path) -> None:
    """Save atomically: the directory appears complete or not at all (it marks a finished stage)."""
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
