"""SSR's defining promises, each checked against a computation that does not go through the
code under test's own choice of model, template or rows:

- θ(0) (the base model, or `method.icl_model`) writes the synthetic instances: the candidates'
  continuations are what a freshly loaded copy of that model samples for the saved prompts;
- the latest model refines: the rehearsed outputs are the greedy answers of base + the stage's
  adapter (loaded by PEFT directly) to the training template's prompt written out by hand;
- rehearsal sets are frozen: every later stage trains on exactly the rows of
  `synthetic/<task>.jsonl`.

Two SSR runs on the tiny model: `ssr_run` (conftest, shared with test_ssr_method; base: the random tiny model, ICL
model: the EOS-rewired one, which ends its samples so synthesis keeps candidates) and
`theta0_run` (base: the EOS-rewired model itself, no ICL model; only its candidates are checked,
so refinement is off to save time).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SSR_OPTS, greedy_raw_by_hand, tiny_config
from ssr.config import load_config
from ssr.generation import HFGenerator, SamplingParams
from ssr.io import read_jsonl
from ssr.models import load_base_model, load_tokenizer
from ssr.runner import run

TASKS = ["reverse", "upper", "count"]


@pytest.fixture(scope="module")
def theta0_run(task_dir, stopping_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("theta0-run") / "run"
    raw = tiny_config(task_dir, stopping_model_dir, "ssr", tasks=("reverse", "upper"), **SSR_OPTS, refine=False)
    raw["eval"]["max_examples"] = 1
    run(load_config(None, raw=raw), out)
    return out, raw


def _resample(model, tokenizer, run_dir: Path, task: str, raw: dict, stage_index: int) -> dict[tuple[int, int], str]:
    """What `model` samples for the run's saved ICL prompts with the config's sampling settings
    (seed = seed + stage, as the README says), by (prompt id, sample)."""
    m = raw["method"]
    prompts = read_jsonl(run_dir / "synthetic" / f"{task}.prompts.jsonl")
    ids = [tokenizer(p["text"], add_special_tokens=True)["input_ids"] for p in prompts]
    params = SamplingParams(max_new_tokens=m["synth_max_new_tokens"], max_total_tokens=512, do_sample=True,
                            temperature=0.9, top_p=0.6, repetition_penalty=1.2,  # the documented defaults
                            num_samples=m["samples_per_prompt"], seed=raw["seed"] + stage_index)
    out = HFGenerator(model, tokenizer, m["batch_size"], show_progress=False).generate(ids, params)
    return {(p["id"], s): str(text) for p, samples in zip(prompts, out) for s, text in enumerate(samples)}


def _continuations(run_dir: Path, task: str) -> dict[tuple[int, int], str]:
    return {(c["prompt_id"], c["sample"]): c["continuation"]
            for c in read_jsonl(run_dir / "synthetic" / f"{task}.candidates.jsonl")}


def _with_adapter(model_dir: Path, adapter: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_model(str(model_dir)), str(adapter)).eval()


def test_theta0_writes_the_synthetic_instances(theta0_run, stopping_model_dir):
    """Synthesis after stage 1 runs while the stage-1 adapter is on the model; the continuations
    must still be the base model's own samples, not the fine-tuned model's."""
    out, raw = theta0_run
    tok = load_tokenizer(str(stopping_model_dir))
    saved = _continuations(out, "reverse")
    fresh_base = _resample(load_base_model(str(stopping_model_dir)), tok, out, "reverse", raw, stage_index=1)
    latest = _resample(_with_adapter(stopping_model_dir, out / "stages" / "1-reverse" / "adapter"), tok, out, "reverse", raw, 1)
    assert latest != fresh_base  # the two models sample differently: the check below can tell them apart
    assert saved == fresh_base


def test_icl_model_writes_the_synthetic_instances_when_set(ssr_run, tiny_model_dir, stopping_model_dir):
    out, raw = ssr_run
    tok = load_tokenizer(str(tiny_model_dir))
    saved = _continuations(out, "upper")
    icl = _resample(load_base_model(str(stopping_model_dir)), tok, out, "upper", raw, stage_index=2)
    base = _resample(load_base_model(str(tiny_model_dir)), tok, out, "upper", raw, stage_index=2)
    assert base != icl and saved == icl



def test_the_latest_model_refines_greedily_through_the_training_template(ssr_run, tiny_model_dir):
    out, raw = ssr_run
    tok = load_tokenizer(str(tiny_model_dir))
    for i, task in enumerate(TASKS[:2], 1):
        candidates = read_jsonl(out / "synthetic" / f"{task}.candidates.jsonl")
        selected = sorted((c for c in candidates if c["selected"]), key=lambda c: c["selection_rank"])
        rehearsed = read_jsonl(out / "synthetic" / f"{task}.jsonl")
        assert selected and rehearsed
        definition = json.loads((Path(raw["data"]["dir"]) / f"{task}.train.jsonl").read_text().splitlines()[0])["full_prompt"].split("\n\n")[0]
        latest = _with_adapter(tiny_model_dir, out / "stages" / f"{i}-{task}" / "adapter")
        expected = greedy_raw_by_hand(latest, tok, definition, [c["input"] for c in selected], raw["eval"]["max_new_tokens"])
        base = greedy_raw_by_hand(load_base_model(str(tiny_model_dir)), tok, definition, [c["input"] for c in selected],
                               raw["eval"]["max_new_tokens"])
        assert expected != base  # refinement by θ(0) would show
        # empty answers teach nothing and are dropped; the rest, in selection order
        assert [(r["input"], r["output"]) for r in rehearsed] == [(c["input"], o) for c, o in zip(selected, expected) if o]
        assert all(r["refined"] and r["definition"] == definition for r in rehearsed)


def test_rehearsal_sets_are_frozen_across_later_stages(ssr_run):
    """Stage 3 trains on exactly the rows written after stage 1 and 2, field for field, in file
    order: nothing is re-synthesised or re-refined by a later model."""
    out, _ = ssr_run
    for i, task in enumerate(TASKS, 1):
        rows = read_jsonl(out / "stages" / f"{i}-{task}" / "train.jsonl")
        assert [r for r in rows if r["source"] == "new"] == [r for r in rows if r["task"] == task]
        for previous in TASKS[: i - 1]:
            assert [r for r in rows if r["task"] == previous] == read_jsonl(out / "synthetic" / f"{previous}.jsonl")
        assert {r["source"] for r in rows if r["task"] != task} <= {"synthetic"}


def test_the_synth_command_refines_with_the_adapter_it_is_given(ssr_run, tiny_model_dir, tmp_path):
    """`ssr synth --adapter DIR` refines with θ(0) + that adapter: the answers transformers' greedy
    search gives with it (and not the base model's). The adapter here is saved as pickle, which
    `model.allow_pickle: true` lets the runner load."""
    import safetensors.torch
    import torch

    from ssr.cli import main

    out, raw = ssr_run
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({**raw, "model": {**raw["model"], "allow_pickle": True}}))  # JSON is YAML
    adapter = tmp_path / "pickled-adapter"
    adapter.mkdir()
    trained = out / "stages" / "2-upper" / "adapter"
    shutil.copy(trained / "adapter_config.json", adapter)
    torch.save(safetensors.torch.load_file(trained / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    assert main(["synth", str(config), "--task", "reverse", "-o", str(tmp_path / "s"), "--adapter", str(adapter)]) == 0
    candidates = read_jsonl(tmp_path / "s" / "synthetic" / "reverse.candidates.jsonl")
    selected = sorted((c for c in candidates if c["selected"]), key=lambda c: c["selection_rank"])
    rehearsed = read_jsonl(tmp_path / "s" / "synthetic" / "reverse.jsonl")
    definition = rehearsed[0]["definition"]
    inputs = [c["input"] for c in selected]
    tok = load_tokenizer(str(tiny_model_dir))
    expected = greedy_raw_by_hand(_with_adapter(tiny_model_dir, adapter), tok, definition, inputs, raw["eval"]["max_new_tokens"])
    assert expected != greedy_raw_by_hand(load_base_model(str(tiny_model_dir)), tok, definition, inputs, raw["eval"]["max_new_tokens"])
    assert [(r["input"], r["output"]) for r in rehearsed] == [(x, o) for x, o in zip(inputs, expected) if o]
