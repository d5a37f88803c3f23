"""Safe defaults: no pickle weights, no model-supplied code, unless the config says so; and a
claim cleans what killed writes left."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from ssr.config import load_config
from ssr.errors import ConfigError
from ssr.models.loading import load_base_model, load_tokenizer
from ssr.models.lora import attach_lora, load_adapter, save_adapter
from ssr.config import LoraSettings
from ssr.runner import RunDir
from test_fuzz import hang_guard


def _pickled_copy(tmp_path, tiny_model_dir):
    """The tiny model with its weights in a pickle file (pytorch_model.bin) only; and the model."""
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    return pickled, model


def _copy_with_own_code(tmp_path, tiny_model_dir):
    """The tiny model whose config names its own modeling file (EvilModel), which leaves a
    marker file when it runs; and the marker's path."""
    evil = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, evil)
    marker = tmp_path / "code-ran"
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return evil, marker


def test_pickle_weights_need_allow_pickle(tmp_path, tiny_model_dir):
    pickled, model = _pickled_copy(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match=r"only safetensors weights are loaded unless model.allow_pickle: true"):
        load_base_model(str(pickled))
    loaded = load_base_model(str(pickled), allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_pickle_adapters_need_allow_pickle(tmp_path, tiny_model_dir):
    model = attach_lora(load_base_model(str(tiny_model_dir)), LoraSettings(r=2, alpha=4, dropout=0.0), seed=0)
    model.save_pretrained(tmp_path / "adapter", safe_serialization=False)
    with pytest.raises(ConfigError, match=r"no adapter_model.safetensors; pickle weights are loaded only with model.allow_pickle"):
        load_adapter(load_base_model(str(tiny_model_dir)), tmp_path / "adapter", trainable=False)
    assert load_adapter(load_base_model(str(tiny_model_dir)), tmp_path / "adapter", trainable=False, allow_pickle=True)
    save_adapter(model, tmp_path / "safe")  # what a run writes loads by default
    assert load_adapter(load_base_model(str(tiny_model_dir)), tmp_path / "safe", trainable=False)


def test_model_code_is_not_run_without_trust_remote_code(tmp_path, tiny_model_dir):
    evil, marker = _copy_with_own_code(tmp_path, tiny_model_dir)
    model = load_base_model(str(evil))  # a known architecture: the library's own class, not the file's
    assert not marker.exists(), "the model's own code ran without trust_remote_code"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert type(load_base_model(str(evil), trust_remote_code=True)).__name__ == "EvilModel"  # the switch works
    assert marker.exists()


def test_a_run_loads_its_base_model_with_the_configs_model_settings(tmp_path, task_dir, tiny_model_dir):
    """θ(0) of a run (ModelState) is loaded as `model.*` says: pickle weights only with
    allow_pickle, the model's own code only with trust_remote_code, in model.dtype."""
    from ssr.runner import ModelState

    def base(model_dir, **model_settings):
        raw = tiny_config(task_dir, model_dir)
        raw["model"].update(model_settings)
        return ModelState(load_config(None, raw=raw), tmp_path / "run").base()

    pickled, model = _pickled_copy(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="unless model.allow_pickle: true"):
        base(pickled)
    loaded = base(pickled, allow_pickle=True, dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    evil, marker = _copy_with_own_code(tmp_path, tiny_model_dir)
    assert type(base(evil)).__name__ == "LlamaForCausalLM" and not marker.exists()
    assert type(base(evil, trust_remote_code=True)).__name__ == "EvilModel" and marker.exists()


def test_claim_removes_temporaries_of_killed_writes(tmp_path, task_dir, tiny_model_dir):
    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir))
    out = tmp_path / "run"
    preds = out / "stages" / "0-base" / "predictions"
    preds.mkdir(parents=True)
    (preds / ".reverse.jsonl.k2j_x9ab").write_text('{"half": ')  # what a SIGKILL during write_jsonl leaves
    (out / "stages" / ".adapter.abcd1234").mkdir()                 # ... and during save_adapter
    (preds / "reverse.jsonl").write_text("{}\n")
    RunDir(out).claim(cfg)
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".")) == []
    assert (preds / "reverse.jsonl").read_text() == "{}\n"


def test_training_refuses_zero_rows(tiny_model_dir):
    from ssr.config import TrainConfig
    from ssr.models.templates import get_template
    from ssr.training import train_stage

    model = attach_lora(load_base_model(str(tiny_model_dir)), LoraSettings(r=2, alpha=4, dropout=0.0), seed=0)
    template = get_template("raw", load_tokenizer(str(tiny_model_dir)))
    with pytest.raises(ValueError, match="no training rows"), hang_guard(60):  # it used to loop forever
        train_stage(model, template, [], TrainConfig(epochs=1, batch_size=2, grad_accum=1), seed=0)
