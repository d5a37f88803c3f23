"""LoRA adapters over the base model (PEFT): attach, load, merge, save."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ssr.config import LoraSettings
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
