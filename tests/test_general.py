"""General abilities: lm-evaluation-harness on a stage's model + adapter (local task files in
lm-eval's format, tests/lm_eval_tasks), the judge-free instruction-following score, and runs
with a learnt stage 0 (the built-in general set) on the tiny model."""

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from ssr.config import LmEvalConfig, load_config
from ssr.data.general import general_task
from ssr.io import read_jsonl
from ssr.runner import run

pytest.importorskip("lm_eval")

LOCAL_TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (LOCAL_TASKS / name).read_text().splitlines() if line.strip()]


@torch.inference_mode()
def _logprob(model, context: list[int], continuation: list[int]) -> float:
    """Sum of log p(continuation | context), one plain forward pass."""
    ids = torch.tensor([context + continuation])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(context) - 1 + k, tok].item() for k, tok in enumerate(continuation))


def hand_bits_per_byte(model, tokenizer) -> float:
    """ssr_toy_ppl by hand: every text's tokens scored after the BOS token, nats summed over
    texts, divided by their UTF-8 bytes and by ln 2."""
    texts = [r["text"] for r in _rows("toy_text.jsonl")]
    nats = sum(_logprob(model, [tokenizer.bos_token_id], tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    return -nats / sum(len(t.encode("utf-8")) for t in texts) / math.log(2)


def hand_accuracy(model, tokenizer) -> float:
    """ssr_toy_choice by hand: the choice with the highest log-likelihood after the question."""
    right = 0
    for doc in _rows("toy_choice.jsonl"):
        context = f"Question: {doc['question']}\nAnswer:"
        ctx = tokenizer.encode(context, add_special_tokens=False)
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer.encode(f"{context} {choice}", add_special_tokens=False)
            scores.append(_logprob(model, ctx, whole[len(ctx):]))
        right += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
    return right / len(_rows("toy_choice.jsonl"))


def test_lm_eval_on_local_tasks_scores_the_model_with_its_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from ssr.general import run_lm_eval
    from ssr.models import load_base_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(3)  # a random, non-zero adapter: its effect must show in the scores
    model = get_peft_model(load_base_model(str(tiny_model_dir)), LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    cfg = LmEvalConfig(tasks=["ssr_toy_choice", "ssr_toy_ppl"], include_path=[str(LOCAL_TASKS)], batch_size=4)
    out = run_lm_eval(model, tok, cfg, seed=0)
    assert out["n_samples"] == {"ssr_toy_choice": 6, "ssr_toy_ppl": 4}
    tasks = out["tasks"]
    model.eval()
    assert tasks["ssr_toy_ppl"]["bits_per_byte"] == pytest.approx(hand_bits_per_byte(model, tok), rel=1e-4)
    assert tasks["ssr_toy_choice"]["acc"] == pytest.approx(hand_accuracy(model, tok))
    with model.disable_adapter():  # the base model scores differently: the adapter was applied
        assert abs(hand_bits_per_byte(model, tok) - tasks["ssr_toy_ppl"]["bits_per_byte"]) > 1e-3


def judge_shorter_than_reference(items: list[dict]) -> list[float]:
    """A judge for the hook's test: 1 when the answer is no longer than the reference."""
    return [float(len(i["prediction"]) <= len(i["reference"])) for i in items]


def _general_config(task_dir, model_dir, method, **method_opts) -> dict:
    raw = tiny_config(task_dir, model_dir, method, tasks=("reverse", "upper"), **method_opts)
    raw["tasks"].insert(0, {"name": "general", "builtin": True, "learnt": True})
    raw["eval"]["general"] = {"instructions": "general", "judge": "test_general:judge_shorter_than_reference",
                              "lm_eval": {"tasks": ["ssr_toy_ppl"], "include_path": [str(LOCAL_TASKS)]}}
    return raw


def test_learnt_stage_0_replayed_and_general_abilities_measured(task_dir, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from ssr.models import load_base_model, load_tokenizer

    out = tmp_path / "run"
    results = run(load_config(None, raw=_general_config(task_dir, tiny_model_dir, "replay", per_task=3)), out)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["0-base", "1-reverse", "2-upper"]  # general: no stage
    # every step's wall time is recorded under its name, in the order they ran; the learnt task's
    # rehearsal set is built right after the base model is evaluated ("after 0-base")
    stage_steps = lambda s, more: [f"eval {s} general", f"eval {s} reverse", f"eval {s} upper", f"general {s}", *more]  # noqa: E731
    assert [json.loads(x)["step"] for x in (out / "timings.jsonl").read_text().splitlines()] == [
        *stage_steps("0-base", ["after 0-base", "train 1-reverse"]),
        *stage_steps("1-reverse", ["after 1-reverse", "train 2-upper"]), *stage_steps("2-upper", [])]
    # ... and the machine it ran on, as lscpu would name it (wall times of different machines never mix)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags"))
    bf16 = "yes" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no"
    assert {json.loads(x)["machine"] for x in (out / "timings.jsonl").read_text().splitlines()} == {
        f"{model}, bf16 {bf16}, {os.cpu_count()} cores"}
    s = results["scores"]
    assert results["tasks"] == ["general", "reverse", "upper"] and len(s) == 3 and all(len(r) == 3 for r in s)
    # metrics over the trained tasks (columns 1, 2); the learnt task is reported on its own
    assert results["AR"] == pytest.approx((s[2][1] + s[2][2]) / 2)
    assert results["FWT"] == pytest.approx(s[1][2]) and results["BWT"] == pytest.approx(s[2][1] - s[1][1])
    assert results["learnt"] == {"general": {"before": s[0][0], "after": s[2][0], "change": pytest.approx(s[2][0] - s[0][0])}}

    # replay of real general data: 3 rows of its train split in every stage, reverse's from stage 2
    general = general_task()
    train_keys = {(i.definition, i.input, i.output) for i in general.train}
    for stage, expected in (("1-reverse", {("reverse", "new"): 24, ("general", "replay"): 3}),
                            ("2-upper", {("upper", "new"): 24, ("general", "replay"): 3, ("reverse", "replay"): 3})):
        rows = read_jsonl(out / "stages" / stage / "train.jsonl")
        assert Counter((r["task"], r["source"]) for r in rows) == expected
        assert {(r["definition"], r["input"], r["output"]) for r in rows if r["task"] == "general"} <= train_keys
        assert len({r["definition"] for r in rows if r["task"] == "general"}) > 1  # each row its own instruction

    assert list(results["general"]) == ["0-base", "1-reverse", "2-upper"]
    tok = load_tokenizer(str(tiny_model_dir))
    bpb = {}
    for i, stage in enumerate(results["general"]):
        g = results["general"][stage]
        assert g == json.loads((out / "stages" / stage / "general.json").read_text())
        rows = read_jsonl(out / "stages" / stage / "predictions" / "general.jsonl")
        assert g["instructions"]["rougeL"] == pytest.approx(s[i][0]) and g["instructions"]["n"] == len(rows) == 4
        assert g["instructions"]["judge"] == pytest.approx(
            sum(len(r["prediction"]) <= len(r["target"]) for r in rows) / len(rows))
        bpb[stage] = g["lm_eval"]["tasks"]["ssr_toy_ppl"]["bits_per_byte"]
    # lm-eval scored each stage's own adapter: recomputed by hand from the saved adapter
    model = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(out / "stages" / "2-upper" / "adapter")).eval()
    assert bpb["2-upper"] == pytest.approx(hand_bits_per_byte(model, tok), rel=1e-4)
    assert bpb["0-base"] == pytest.approx(hand_bits_per_byte(load_base_model(str(tiny_model_dir)).eval(), tok), rel=1e-4)
    assert bpb["2-upper"] != pytest.approx(bpb["0-base"], rel=1e-4)

    from ssr.report import build_report

    report = build_report([out], tmp_path / "report").read_text()
    assert "## General abilities" in report and "| 2-upper |" in report and "learnt task general" in report


def test_ssr_synthesises_the_learnt_open_domain_task_from_the_base_model(task_dir, tiny_model_dir, stopping_model_dir, tmp_path):
    out = tmp_path / "run"
    raw = _general_config(task_dir, tiny_model_dir, "ssr", per_task=3, max_prompts=4, samples_per_prompt=2,
                          synth_max_new_tokens=12, batch_size=8, cluster_quota="one", icl_model=str(stopping_model_dir))
    raw["eval"]["general"] = {"instructions": "general", "stages": "last"}
    results = run(load_config(None, raw=raw), out)
    assert list(results["general"]) == ["0-base", "2-upper"]
    demos = {d.id: d for d in general_task().demos}
    prompts = read_jsonl(out / "synthetic" / "general.prompts.jsonl")
    assert len(prompts) == 4
    for p in prompts:  # the open-domain prompt over the general set's demonstrations
        a, b = (demos[i] for i in p["demo_ids"])
        assert p["text"].startswith("Create task instructions following examples below.\n\nInstruction: " + a.definition + "\n")
        assert p["text"].endswith(f"Instruction: {b.definition}\nInput: {b.input or '<noinput>'}\nOutput: {b.output}\n\nInstruction:")
    candidates = read_jsonl(out / "synthetic" / "general.candidates.jsonl")
    stats = json.loads((out / "synthetic" / "general.stats.json").read_text())
    assert stats["generations"] == 8 and sum(v for k, v in stats.items() if k.startswith("verdict_")) == len(candidates)
    assert all("instruction" in c for c in candidates if c["input"] is not None)
    rehearsed = read_jsonl(out / "synthetic" / "general.jsonl")
    for stage in ("1-reverse", "2-upper"):  # the learnt task's synthetic set is rehearsed in every stage
        rows = read_jsonl(out / "stages" / stage / "train.jsonl")
        assert sorted(r["id"] for r in rows if r["task"] == "general") == sorted(r["id"] for r in rehearsed)
        assert {r["source"] for r in rows if r["task"] == "general"} <= {"synthetic"}
    assert (out / "synthetic" / "reverse.jsonl").exists() and not (out / "synthetic" / "upper.jsonl").exists()


def test_open_domain_candidates_are_selected_one_per_cluster_and_refined_under_their_own_instruction(tiny_model_dir):
    from ssr.config import MethodConfig
    from ssr.data.task import Task
    from ssr.generation import HFGenerator
    from ssr.models import get_template, load_base_model, load_tokenizer
    from ssr.synthesis.pipeline import filter_candidates, refine, rehearsal_rows, select_candidates

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir)).eval()
    task = Task("general", "(open)", open_domain=True)
    made = [("Name a colour.", "", "blue"), ("Name a fruit.", "", "pear"), ("Sort the words.", "b a", "a b"),
            ("Sort the words.", "d c", "c d"), ("Add the numbers.", "2 3", "5"), ("Name a colour.", "", "red")]
    cands = [{"candidate_id": k, "prompt_id": 0, "demo_ids": [], "instruction": i, "input": x, "base_output": y,
              "verdict": None} for k, (i, x, y) in enumerate(made)]
    cfg = MethodConfig(name="ssr", per_task=3, cluster_quota="one")
    filter_candidates(cands, task, [], tok, cfg)
    assert [c["verdict"] for c in cands] == ["kept"] * 5 + ["duplicate"]
    assert select_candidates(cands, [], 100, cfg, seed=0) == 3
    selected = sorted((c for c in cands if c["selected"]), key=lambda c: c["selection_rank"])
    assert len({c["cluster"] for c in selected}) == 3  # one per cluster, 3 clusters
    template = get_template("raw", tok)
    outputs = refine(selected, task.definition, HFGenerator(model, tok, 4, show_progress=False), template, 64, 5)
    for c, out in zip(selected, outputs):  # each answered under its own instruction, greedily
        ids = torch.tensor([template.prompt_ids(c["instruction"], c["input"], 64)])
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                  pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert out == tok.decode(expected, skip_special_tokens=True).strip()
    rows = rehearsal_rows(task, selected, outputs, refined=True)
    assert [r["definition"] for r in rows] == [c["instruction"] for c in selected]
    assert [r["input"] for r in rows] == [c["input"] for c in selected]


def test_general_abilities_measured_again_after_a_restart_load_the_stage_model(task_dir, tiny_model_dir, tmp_path):
    """A rerun that must measure stage 2's general abilities again loads that stage's model from
    disk (under `train.adapter: new`, stage 1's adapter merged beneath stage 2's): the same figures."""
    raw = _general_config(task_dir, tiny_model_dir, "sequential")
    raw["train"]["adapter"] = "new"
    out = tmp_path / "run"
    first = run(load_config(None, raw=raw), out)
    general = out / "stages" / "2-upper" / "general.json"
    written = general.read_text()
    general.unlink()
    (out / "results.json").unlink()  # else the finished run would not be opened at all
    assert run(load_config(None, raw=raw), out)["general"] == first["general"]
    assert general.read_text() == written
