"""End to end on a tiny random-weight model over three toy tasks: every method of the engine."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import ssr.runner
from conftest import greedy_raw_by_hand, save_perturbed_lora, tiny_config
from ssr.config import load_config
from ssr.errors import RunDirError
from ssr.evaluation import continual_metrics, score_predictions
from ssr.io import read_jsonl
from ssr.models import load_base_model
from ssr.runner import run, share_first_stage

TASKS = ["reverse", "upper", "count"]


def _run(task_dir, model_dir, out, method="sequential", **opts):
    return run(load_config(None, raw=tiny_config(task_dir, model_dir, method, **opts)), out)


@pytest.mark.parametrize(
    "method, opts",
    [("sequential", {}), ("replay", {"selection": "random", "per_task": 3}), ("replay", {"selection": "kmeans", "ratio": 0.25}),
     ("mtl", {}), ("single", {})],
    ids=["sequential", "replay-random", "replay-kmeans", "mtl", "single"],
)
def test_every_method_end_to_end(task_dir, tiny_model_dir, tmp_path, method, opts, monkeypatch):
    out = tmp_path / "run"
    started_from = []  # the largest |lora_B| of the model each stage starts training: 0 for a fresh LoRA
    real_train = ssr.runner.train_stage
    monkeypatch.setattr(ssr.runner, "train_stage", lambda model, *a, **k: (started_from.append(max(
        p.abs().max().item() for n, p in model.named_parameters() if "lora_B" in n)), real_train(model, *a, **k))[1])
    results = _run(task_dir, tiny_model_dir, out, method, **opts)
    # PEFT initialises lora_B to zero: single and mtl start every stage from θ(0) and a new adapter,
    # the continual methods stages 2 and 3 from the adapter trained so far
    assert started_from[0] == 0 and all((v == 0) == (method in ("single", "mtl")) for v in started_from[1:])
    scores = results["scores"]
    assert results["method"] == method and results["tasks"] == TASKS
    assert len(scores) == 4 and all(len(row) == 3 for row in scores)
    metrics = {k: results[k] for k in ("AR", "FWT", "BWT")}
    if method in ("mtl", "single"):  # no sequence of models: only AR, the final row's mean
        assert metrics == {"AR": pytest.approx(sum(scores[3]) / 3), "FWT": None, "BWT": None}
    else:
        assert metrics == continual_metrics(scores)
    assert results == json.loads((out / "results.json").read_text())
    assert results["engines"] == {"generation": "hf", "generation_dtype": "float32", "training_dtype": "float32",
                                  "training_autocast": "off"} and results["processes"] == 1
    assert (out / "config.yaml").exists() and (out / "run.log").exists()
    for t in TASKS:  # row 0 is the base model, read back from its prediction files
        rows = read_jsonl(out / "stages" / "0-base" / "predictions" / f"{t}.jsonl")
        assert len(rows) == 4 and scores[0][TASKS.index(t)] == pytest.approx(score_predictions(rows)["rougeL"])
    stages = sorted(p.name for p in (out / "stages").iterdir())
    # exact match x 100 of every prediction file, by stage and task (the rows' own verdicts averaged)
    exact_match = {s: {} for s in stages}
    for s in stages:
        for path in (out / "stages" / s / "predictions").glob("*.jsonl"):
            rows = read_jsonl(path)
            exact_match[s][path.stem] = pytest.approx(100 * sum(r["exact_match"] for r in rows) / len(rows))
    assert results["exact_match"] == exact_match
    if method == "mtl":
        assert stages == ["0-base", "1-mtl"]
        assert all(v is None for row in scores[1:3] for v in row) and None not in scores[3]
        assert results["AR"] == pytest.approx(sum(scores[3]) / 3) and results["BWT"] is None
        assert {r["task"] for r in read_jsonl(out / "stages" / "1-mtl" / "train.jsonl")} == set(TASKS)
        return
    assert stages == ["0-base", "1-reverse", "2-upper", "3-count"]
    if method == "single":
        assert [scores[i][i - 1] is not None for i in (1, 2, 3)] == [True] * 3 and scores[1][1] is None
        assert None not in scores[3] and results["FWT"] is None and results["BWT"] is None
    else:
        assert all(v is not None for row in scores for v in row)
    for i, t in enumerate(TASKS, 1):
        sdir = out / "stages" / f"{i}-{t}"
        rows = read_jsonl(sdir / "train.jsonl")
        new = [r for r in rows if r["source"] == "new"]
        assert len(new) == 24 and {r["task"] for r in new} == {t}
        rehearsed = [r for r in rows if r["source"] != "new"]
        if method == "replay":
            assert sorted({r["task"] for r in rehearsed}) == sorted(TASKS[: i - 1])
            per_task = opts.get("per_task") or round(opts["ratio"] * 24)
            assert len(rehearsed) == per_task * (i - 1) and {r["source"] for r in rehearsed} <= {"replay"}
        else:
            assert rehearsed == []
    # the adapter is a plain PEFT adapter
    model = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(out / "stages" / "3-count" / "adapter"))
    assert model.peft_config["default"].r == 8


def test_killed_run_resumes_where_it_stopped(task_dir, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_train = ssr.runner.train_stage
    calls = []

    def dies_in_stage_2(model, template, rows, cfg, seed, desc, penalty=None, bf16=None):
        calls.append(desc)
        if "2-upper" in desc:
            raise KeyboardInterrupt("killed")
        return real_train(model, template, rows, cfg, seed, desc=desc, penalty=penalty, bf16=bf16)

    monkeypatch.setattr(ssr.runner, "train_stage", dies_in_stage_2)
    with pytest.raises(KeyboardInterrupt):
        _run(task_dir, tiny_model_dir, out, "replay", per_task=3)
    assert calls == ["train 1-reverse", "train 2-upper"]
    assert (out / "stages" / "1-reverse" / "adapter").exists() and not (out / "stages" / "2-upper" / "adapter").exists()
    assert not list((out / "stages" / "2-upper").glob(".adapter*"))  # no half-written adapter left behind
    stamp = (out / "stages" / "1-reverse" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    base_pred = (out / "stages" / "0-base" / "predictions" / "count.jsonl").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(ssr.runner, "train_stage", lambda *a, **k: (calls.append(k["desc"]), real_train(*a, **k))[1])
    resumed = _run(task_dir, tiny_model_dir, out, "replay", per_task=3)
    assert calls == ["train 2-upper", "train 3-count"]
    assert (out / "stages" / "1-reverse" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "stages" / "0-base" / "predictions" / "count.jsonl").stat().st_mtime_ns == base_pred

    # resuming gives the same numbers as a run that was never interrupted
    monkeypatch.setattr(ssr.runner, "train_stage", real_train)
    straight = _run(task_dir, tiny_model_dir, tmp_path / "straight", "replay", per_task=3)
    assert resumed["scores"] == straight["scores"]

    calls.clear()  # a finished run does no work at all
    monkeypatch.setattr(ssr.runner, "train_stage", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(ssr.runner, "load_base_model", lambda *a, **k: pytest.fail("a finished run must not load the model"))
    assert _run(task_dir, tiny_model_dir, out, "replay", per_task=3)["scores"] == straight["scores"] and calls == []


def test_a_changed_config_is_refused(task_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(task_dir, tiny_model_dir, tasks=("upper",))
    run(load_config(None, raw=cfg), out)
    cfg["train"]["lr"] = 0.5
    with pytest.raises(RunDirError, match=r"train.lr: 0.001 -> 0.5"):
        run(load_config(None, raw=cfg), out)
    cfg["train"]["lr"] = 1e-3
    cfg["eval"]["batch_size"] = 2  # runtime-only keys may change
    run(load_config(None, raw=cfg), out)



@pytest.fixture(scope="module")
def new_adapter_run(task_dir, tiny_model_dir, tmp_path_factory) -> tuple[dict, Path, dict]:
    """One finished `train.adapter: new` run over reverse and upper, read (never changed) by the
    tests of what it wrote: its raw config, directory and results."""
    raw = tiny_config(task_dir, tiny_model_dir, tasks=("reverse", "upper"))
    raw["train"]["adapter"] = "new"
    out = tmp_path_factory.mktemp("new-adapter") / "run"
    return raw, out, run(load_config(None, raw=raw), out)


def test_new_adapter_per_stage(tiny_model_dir, new_adapter_run):
    """`train.adapter: new`: stage 2's model is the base with stage 1's adapter merged into its
    weights, plus stage 2's own adapter (built here with PEFT directly)."""
    from ssr.models import load_tokenizer

    _, out, results = new_adapter_run
    assert len(results["scores"]) == 3 and results["BWT"] is not None
    tok = load_tokenizer(str(tiny_model_dir))
    rows = read_jsonl(out / "stages" / "2-upper" / "predictions" / "upper.jsonl")
    definition = "Write the input in upper case."
    adapters = [str(out / "stages" / s / "adapter") for s in ("1-reverse", "2-upper")]
    merged = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), adapters[0]).merge_and_unload()
    chained = PeftModel.from_pretrained(merged, adapters[1]).eval()
    alone = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), adapters[1]).eval()
    inputs = [r["input"] for r in rows]
    expected = greedy_raw_by_hand(chained, tok, definition, inputs, 6)
    assert expected != greedy_raw_by_hand(alone, tok, definition, inputs, 6)  # without the merge it would show
    assert [r["prediction"] for r in rows] == expected


def test_stage_1_is_the_same_computation_for_continual_methods(task_dir, tiny_model_dir, tmp_path, monkeypatch):
    seq = tmp_path / "sequential"
    _run(task_dir, tiny_model_dir, seq, "sequential")
    rep = tmp_path / "replay"
    _run(task_dir, tiny_model_dir, rep, "replay", per_task=3)
    stage = Path("stages") / "1-reverse"
    for name in ("adapter/adapter_model.safetensors", "train.jsonl", "predictions/upper.jsonl"):
        assert (seq / stage / name).read_bytes() == (rep / stage / name).read_bytes()

    # so a new replay run may start from the sequential run's stage 1 (`reuse_from`, no callback)
    calls = []
    real_train = ssr.runner.train_stage
    monkeypatch.setattr(ssr.runner, "train_stage", lambda *a, **k: (calls.append(k["desc"]), real_train(*a, **k))[1])
    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir, "replay", per_task=3))
    shared = tmp_path / "shared"
    assert run(cfg, shared, reuse_from=seq)["scores"] == json.loads((rep / "results.json").read_text())["scores"]
    assert calls == ["train 2-upper", "train 3-count"]
    # each run's log handler went with it: the later runs in this process wrote nothing into it
    assert str(rep) not in (seq / "run.log").read_text() and str(shared) not in (rep / "run.log").read_text()
    # not across different training settings, nor into a run that has begun
    other = load_config(None, raw={**tiny_config(task_dir, tiny_model_dir, "replay", per_task=3), "seed": 8})
    assert not share_first_stage(seq, other, tmp_path / "other")
    assert not share_first_stage(seq, cfg, shared)


def test_icl_model_is_the_base_model_and_stage_generators_serve_each_stage(task_dir, tiny_model_dir, tmp_path):
    """ModelState, the owner of which weights generate: after stage 1 trained (its adapter on the
    model), the ICL generator answers exactly as a freshly loaded base model, and the stage
    generator as base + the adapter on disk."""
    import torch

    from ssr.data import load_task
    from ssr.generation import HFGenerator, SamplingParams
    from ssr.methods import get_method
    from ssr.models import load_tokenizer
    from ssr.models.lora import load_adapter, save_adapter
    from ssr.runner import BASE_STAGE, ModelState, RunContext

    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir, tasks=("reverse", "upper")))
    tasks = [load_task(t, cfg.data, seed=cfg.seed) for t in cfg.tasks]
    plan = get_method("sequential")(cfg, tasks).plan()
    models = ModelState(cfg, tmp_path)
    ctx = RunContext(cfg, tmp_path, tasks, models, plan)
    model = models.start_stage(plan[0], [])
    with torch.no_grad():  # a trained adapter: B far from zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    save_adapter(model, tmp_path / "stages" / plan[0].name / "adapter")
    models.finished(plan[0])

    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [tok(t)["input_ids"] for t in ("Reverse the words.\n\nInput: apple river\nOutput:", "stone cloud green")]
    params = SamplingParams(max_new_tokens=8)
    fresh_base = HFGenerator(load_base_model(str(tiny_model_dir)), tok, 4).generate(prompts, params)
    tuned = HFGenerator(load_adapter(load_base_model(str(tiny_model_dir)), tmp_path / "stages" / plan[0].name / "adapter",
                                     trainable=False), tok, 4).generate(prompts, params)
    assert fresh_base != tuned
    with models.icl_generator() as (generator, _, _):
        assert generator.generate(prompts, params) == fresh_base
    assert ctx.generator_after(plan[0]).generate(prompts, params) == tuned
    assert ctx.generator_after(BASE_STAGE).generate(prompts, params) == fresh_base
    # in batches of the size asked for (SSR's method.batch_size), else the evaluation's
    assert (ctx.generator_after(plan[0], 3).batch_size, ctx.generator_after(plan[0]).batch_size) == (3, cfg.eval.batch_size)


def test_a_run_saved_before_new_config_keys_resumes(task_dir, tiny_model_dir, tmp_path):
    """A run directory whose config.yaml predates keys added since (their defaults reproduce the
    old behaviour) is resumed, not refused as a different config; a changed value still is."""
    import yaml

    out = tmp_path / "run"
    raw = tiny_config(task_dir, tiny_model_dir, tasks=("upper",))
    first = run(load_config(None, raw=raw), out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for section, key in (("method", "screen"), ("method", "reg_lambda"), ("train", "gradient_checkpointing")):
        del saved[section][key]
    del saved["tasks"][0]["language"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run(load_config(None, raw=raw), out)["scores"] == first["scores"]
    with pytest.raises(RunDirError, match="train.lr"):
        run(load_config(None, raw={**raw, "train": {**raw["train"], "lr": 5e-4}}), out)


@pytest.mark.parametrize("language", ["es", "en"])
def test_evaluation_cuts_prompts_and_scores_in_the_tasks_language(task_dir, tiny_model_dir, tmp_path, monkeypatch, language):
    """Each stage's evaluation answers prompts cut to `train.max_source_length` (their start
    dropped), and scores them in the task's `language`: for a non-English task a reference that
    adds an accented word to the answer is a different word sequence (Unicode words), whereas
    the English scorer drops the "é" and finds the answer whole. Its progress bar names the task."""
    import re
    import shutil

    import ssr.generation
    from ssr.models import load_tokenizer

    bars = []
    real_tqdm = ssr.generation.tqdm
    monkeypatch.setattr(ssr.generation, "tqdm", lambda *a, **kw: bars.append(kw.get("desc")) or real_tqdm(*a, **kw))

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for split in ("train", "demos"):
        shutil.copy(task_dir / f"reverse.{split}.jsonl", tasks)
    rows = read_jsonl(task_dir / "reverse.eval.jsonl")[:4]
    definition, inputs = "Reverse the order of the words in the input.", [r["input"] for r in rows]
    base, tok = load_base_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    answers = greedy_raw_by_hand(base, tok, definition, inputs, 6, max_source_length=8)
    assert answers != greedy_raw_by_hand(base, tok, definition, inputs, 6)  # the cut changes the answers
    assert all(re.findall(r"[a-z0-9]+", a.lower()) for a in answers)  # every answer has words to score
    (tasks / "reverse.eval.jsonl").write_text(
        "".join(json.dumps({**r, "output": f"{a} é"}) + "\n" for r, a in zip(rows, answers)))
    cfg = tiny_config(tasks, tiny_model_dir, tasks=("reverse",))
    cfg["train"]["max_source_length"] = 8
    cfg["tasks"][0]["language"] = language
    run(load_config(None, raw=cfg), tmp_path / "run")
    assert bars == ["eval reverse", "eval reverse"]  # before and after the stage
    predicted = {r["input"]: r for r in read_jsonl(tmp_path / "run" / "stages" / "0-base" / "predictions" / "reverse.jsonl")}
    assert [predicted[x]["prediction"] for x in inputs] == answers
    for x, answer in zip(inputs, answers):
        n = len(re.findall(r"\w+", answer.lower()))  # the reference has one word more: LCS n, P 1, R n/(n+1)
        assert predicted[x]["rougeL"] == pytest.approx(2 * n / (2 * n + 1) if language == "es" else 1.0)


def test_a_stage_trains_its_rows_with_the_seed_plus_its_index(task_dir, tiny_model_dir, tmp_path):
    """Stage k is `train_stage` on the rows of its train.jsonl, with a LoRA adapter attached and
    trained under `seed + k` (README, resumption): composed here by hand, the same adapter weights."""
    import safetensors.torch

    from ssr.models import get_template, load_tokenizer
    from ssr.models.lora import attach_adapter
    from ssr.training import train_stage

    raw = tiny_config(task_dir, tiny_model_dir, tasks=("reverse",))
    cfg = load_config(None, raw=raw)
    out = tmp_path / "run"
    run(cfg, out)
    stage = out / "stages" / "1-reverse"
    model = attach_adapter(load_base_model(str(tiny_model_dir)), cfg, 1, raw["seed"] + 1)
    train_stage(model, get_template("raw", load_tokenizer(str(tiny_model_dir))), read_jsonl(stage / "train.jsonl"),
                cfg.train, raw["seed"] + 1, desc="by hand", bf16=False)
    saved = safetensors.torch.load_file(stage / "adapter" / "adapter_model.safetensors")
    mine = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(mine) > 0
    for (name, want), got in zip(sorted(mine.items()), (saved[k] for k in sorted(saved))):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), name


def test_auto_precision_is_resolved_once_per_run_and_recorded(task_dir, tiny_model_dir, tmp_path):
    """`train.bf16: auto` is decided once for the run (and logged once), not again by each stage;
    `model.dtype: auto` is fp32 for the hf engine on a CPU, and an hf run never resolves (nor
    measures, nor logs) the vLLM engine's dtype. results.json records what was decided."""
    raw = tiny_config(task_dir, tiny_model_dir, tasks=("reverse", "upper"))
    raw["train"]["bf16"] = raw["model"]["dtype"] = "auto"
    raw["model"]["cache_dir"] = str(tmp_path / "cache")
    results = run(load_config(None, raw=raw), tmp_path / "run")
    log_text = (tmp_path / "run" / "run.log").read_text()
    assert log_text.count("train.bf16 auto: ") == 1 and "for vLLM" not in log_text
    autocast = "bfloat16" if "train.bf16 auto: on" in log_text else "off"
    assert results["engines"] == {"generation": "hf", "generation_dtype": "float32", "training_dtype": "float32",
                                  "training_autocast": autocast}


@pytest.mark.parametrize("adapter", ["continue", "new"])
def test_a_stage_evaluated_after_a_restart_loads_the_model_it_trained(task_dir, tiny_model_dir, tmp_path, adapter):
    """A rerun that must evaluate stage 2 again loads it from disk: stage 1's adapter continued
    (`continue`), or stage 1's merged into the weights under stage 2's own (`new`). Its answers
    are those the run gave with the model in memory."""
    cfg = tiny_config(task_dir, tiny_model_dir, tasks=("reverse", "upper"))
    cfg["train"]["adapter"] = adapter
    out = tmp_path / "run"
    first = run(load_config(None, raw=cfg), out)
    predictions = out / "stages" / "2-upper" / "predictions"
    written = {p.name: p.read_text() for p in predictions.iterdir()}
    for p in predictions.iterdir():
        p.unlink()
    (out / "results.json").unlink()  # else the finished run would not be opened at all
    assert run(load_config(None, raw=cfg), out)["scores"] == first["scores"]
    assert {p.name: p.read_text() for p in predictions.iterdir()} == written


def test_a_split_generator_answers_every_prompt_in_order(tiny_model_dir):
    """`SplitGenerator` on one process: split (the hf backend's way) it answers every prompt,
    back in the caller's order after its longest-first sort, with each answer and its finish
    reason as the plain generator gives them one prompt at a time; not split (vLLM's way) it hands
    the main process's answers over whole. Sampled generation is refused when split."""
    from ssr.distributed import Dist
    from ssr.generation import HFGenerator, SamplingParams
    from ssr.models import load_tokenizer
    from ssr.runner import SplitGenerator

    tok = load_tokenizer(str(tiny_model_dir))
    plain = HFGenerator(load_base_model(str(tiny_model_dir)), tok, batch_size=2, show_progress=False)
    prompts = [tok(text)["input_ids"] for text in ("apple", "seven paper stone cloud river green", "quick table", "music")]
    greedy = SamplingParams(max_new_tokens=5)
    alone = [plain.generate([p], greedy)[0] for p in prompts]
    assert len({len(p) for p in prompts}) > 1 and any(c[0].finish_reason == "length" for c in alone)
    for split in (True, False):
        got = SplitGenerator(Dist(), plain, split=split).generate(prompts, greedy)
        assert [[(str(c), c.finish_reason) for c in row] for row in got] == [[(str(c), c.finish_reason) for c in row] for row in alone]
    with pytest.raises(ValueError, match=r"^sampled generation is not split across processes \(its draws would change\); run it on one$"):
        SplitGenerator(Dist(), plain, split=True).generate(prompts, SamplingParams(max_new_tokens=5, do_sample=True))


def test_merged_weights_name_the_adapter_chain_and_save_it_merged(tiny_model_dir, new_adapter_run, tmp_path, monkeypatch):
    """What a merged vLLM engine is handed (no engine needed to check it): θ(0) is None; stage 2
    under `train.adapter: new` is named by its chain of adapter directories with their files'
    latest times, and saves as a model directory holding θ(0) + stage 1's adapter merged + stage
    2's merged (merged here with PEFT directly), while the loaded model keeps its adapter."""
    from transformers import AutoModelForCausalLM

    from ssr.methods.base import Stage
    from ssr.runner import BASE_STAGE, ModelState

    raw, out, _ = new_adapter_run
    first, second = Stage(1, "1-reverse", ("reverse",), fresh=True), Stage(2, "2-upper", ("upper",))
    models = ModelState(load_config(None, raw=raw), out)
    assert models.merged_weights(BASE_STAGE, []) is None
    weights = models.merged_weights(second, [first])
    adapters = [out / "stages" / s / "adapter" for s in ("1-reverse", "2-upper")]
    assert weights.key == tuple((str(d.resolve()), max(f.stat().st_mtime_ns for f in d.iterdir())) for d in adapters)
    weights.save(tmp_path / "merged")
    assert models.adapter_parameters(), "the loaded model keeps its adapter"
    by_hand = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(adapters[0])).merge_and_unload()
    by_hand = PeftModel.from_pretrained(by_hand, str(adapters[1])).merge_and_unload().state_dict()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert saved.keys() == by_hand.keys() and next(iter(saved.values())).dtype == torch.float32
    assert all(torch.allclose(saved[k], by_hand[k], atol=1e-6) for k in saved)
    base = load_base_model(str(tiny_model_dir)).state_dict()
    assert not all(torch.equal(saved[k], base[k]) for k in saved)  # the merge changed the weights
    # saved in the vLLM engine's dtype, not the training model's: with `model.dtype: auto` on a CPU
    # the hf model is fp32 and the engine's dtype is measured; here a CPU measured with bf16 2x fp32
    # (the real probe, run beside other work, may choose fp32 and hide the difference)
    monkeypatch.setattr("ssr.models.dtype.cpu_bf16_speedup", lambda cache_dir=None: 2.0)
    auto = {**raw, "model": {**raw["model"], "dtype": "auto", "cache_dir": str(tmp_path / "cache")}}  # the shared config unchanged
    measured = ModelState(load_config(None, raw=auto), out)
    measured.merged_weights(second, [first]).save(tmp_path / "merged-auto")
    assert measured.vllm_dtype_name == "bfloat16"
    assert measured.hf_dtype_name == "float32" or torch.cuda.is_available()
    assert next(iter(AutoModelForCausalLM.from_pretrained(tmp_path / "merged-auto", dtype="auto").state_dict().values())).dtype == torch.bfloat16


def test_the_vllm_engine_is_asked_for_with_the_configs_settings(task_dir, tiny_model_dir, monkeypatch):
    """The one engine a run uses is fixed by the config: the model's directory, the vLLM dtype,
    the smallest LoRA rank vLLM sizes for that holds `train.lora.r` (9 -> 16), the memory
    settings, the safety switches and how stages are served. (Starting it: tests/test_vllm.py.)"""
    import ssr.engines.vllm
    from ssr.engines.vllm import EngineSpec
    from ssr.runner import ModelState

    raw = tiny_config(task_dir, tiny_model_dir, backend="vllm")
    raw["model"].update(dtype="bfloat16", allow_pickle=True, trust_remote_code=True)
    raw["train"]["lora"] = {"r": 9}
    raw["generation"].update(kv_cache_gb=0.75, gpu_memory_utilization=0.3, vllm_adapters="merged")
    asked = []
    monkeypatch.setattr(ssr.engines.vllm, "get_engine", lambda spec: asked.append(spec) or "the engine")
    assert ModelState(load_config(None, raw=raw), tiny_model_dir).engine() == "the engine"
    assert asked == [EngineSpec(model_path=str(tiny_model_dir), dtype="bfloat16", max_lora_rank=16, kv_cache_gb=0.75,
                                gpu_memory_utilization=0.3, trust_remote_code=True, allow_pickle=True, adapters="merged")]


def test_a_gguf_model_is_read_from_its_conversion_in_model_cache_dir(task_dir, tiny_model_dir, tmp_path, monkeypatch):
    """A GGUF model is converted once into `model.cache_dir` (`models/<file stem>-<key>`): what is
    prepared before a run and the vLLM engine both read that conversion, never the default cache
    (SSR_CACHE points at an empty folder here). The .gguf is a placeholder: its conversion (the
    tiny model) is already in the cache, so a reader that looked elsewhere would try to convert it."""
    import shutil

    import ssr.engines.vllm
    from ssr.models.loading import _gguf_cache_dir, resolve_model
    from ssr.runner import ModelState, prepare_caches

    gguf = tmp_path / "weights" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"a placeholder, never parsed")
    cache, elsewhere = tmp_path / "cache", tmp_path / "default-cache"
    converted = _gguf_cache_dir(resolve_model(str(gguf)), str(cache))
    assert converted.parent == cache / "models" and converted.name.startswith("tiny-")
    shutil.copytree(tiny_model_dir, converted)
    monkeypatch.setenv("SSR_CACHE", str(elsewhere))
    raw = tiny_config(task_dir, tiny_model_dir, backend="vllm")
    raw["model"].update(name=str(gguf), cache_dir=str(cache), dtype="float32")
    cfg = load_config(None, raw=raw)
    prepare_caches(cfg)
    tiny = load_base_model(str(tiny_model_dir))  # the hf loader reads the conversion too
    loaded = ModelState(cfg, tmp_path / "run").base()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny.state_dict().values()))
    asked = []
    monkeypatch.setattr(ssr.engines.vllm, "get_engine", lambda spec: asked.append(spec) or "the engine")
    assert ModelState(cfg, tmp_path / "run").engine() == "the engine"
    assert asked[0].model_path == str(converted)
    assert not elsewhere.exists()


ZERO3_BACKEND = ("DeepSpeed ZeRO-3 shards the training model's weights across processes, so it cannot generate by "
                 "itself: use generation.backend: vllm (the engine loads the weights and each stage's adapter from disk), "
                 "or ZeRO-2 (see README, Scaling)")
ZERO3_MERGED = "under DeepSpeed ZeRO-3 no process holds a stage's whole weights to merge: use vllm_adapters: lora"


@pytest.mark.parametrize("zero_stage, backend, adapters, refused", [
    (None, "hf", "auto", None), (2, "hf", "auto", None), (3, "vllm", "lora", None),
    (3, "hf", "auto", ("backend", ZERO3_BACKEND)), (3, "vllm", "merged", ("vllm_adapters", ZERO3_MERGED))])
def test_a_zero3_launch_refuses_what_it_cannot_generate_with(task_dir, tiny_model_dir, tmp_path, zero_stage, backend,
                                                              adapters, refused):
    """Under DeepSpeed ZeRO-3 no process holds the whole model: the hf backend cannot generate and
    a merged vLLM engine has nothing to merge, so the launch is refused before anything is written,
    naming the config file's line. (DeepSpeed is not installed here: the launch's accelerator
    state is stood in for, around accelerate's own DeepSpeedPlugin; the refusal reads only its
    ZeRO stage.)"""
    from types import SimpleNamespace

    import yaml
    from accelerate.utils import DeepSpeedPlugin

    from ssr.distributed import Dist
    from ssr.errors import ConfigError
    from ssr.runner import check_launch

    plugin = DeepSpeedPlugin(zero_stage=zero_stage) if zero_stage else None
    launch = SimpleNamespace(process_index=0, num_processes=2, is_main_process=True, device=torch.device("cpu"),
                             state=SimpleNamespace(deepspeed_plugin=plugin))
    raw = tiny_config(task_dir, tiny_model_dir, backend=backend)
    raw["generation"]["vllm_adapters"] = adapters
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(str(path))
    if refused is None:
        check_launch(cfg, Dist(launch))
        return
    key, message = refused
    lines = path.read_text().splitlines()  # the key's line, within the generation section
    line = 1 + next(i for i in range(lines.index("generation:"), len(lines)) if lines[i].startswith(f"  {key}:"))
    with pytest.raises(ConfigError) as error:
        check_launch(cfg, Dist(launch))
    assert str(error.value) == f"{path}:{line}: field 'generation.{key}': {message}"


def test_run_refuses_a_zero3_launch_it_cannot_generate_with_before_writing(task_dir, tiny_model_dir, tmp_path,
                                                                           monkeypatch):
    """`run` itself asks the launch check, with the run's config: under a ZeRO-3 launch (its
    accelerator state stood in for, as above) the hf backend is refused and nothing is written."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin

    from ssr.distributed import Dist
    from ssr.errors import ConfigError

    launch = SimpleNamespace(process_index=0, num_processes=2, is_main_process=True, device=torch.device("cpu"),
                             state=SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3)))
    monkeypatch.setattr(ssr.runner, "current_dist", lambda: Dist(launch))
    with pytest.raises(ConfigError, match="ZeRO-3"):
        _run(task_dir, tiny_model_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_prepare_draws_a_demo_pool_of_method_n_demos_where_a_task_has_no_demos_file(task_dir, tiny_model_dir):
    """Without a `demos` file, a task's demonstrations are `method.n_demos` of its training rows."""
    from ssr.runner import prepare

    raw = tiny_config(task_dir, tiny_model_dir, "ssr", n_demos=3)
    for t in raw["tasks"]:
        del t["demos"]
    tasks, _ = prepare(load_config(None, raw=raw))
    for task in tasks:
        train_inputs = {x.input for x in task.train}
        assert len(task.demos) == 3 and {d.input for d in task.demos} <= train_inputs


def test_prepare_names_every_problem_of_the_method_at_once(task_dir, tiny_model_dir):
    """Each problem on its own line, in the tasks' order (here: too few demonstrations for
    `n_shots` in both tasks SSR synthesizes)."""
    from ssr.errors import ConfigError
    from ssr.runner import prepare

    with pytest.raises(ConfigError) as refused:
        prepare(load_config(None, raw=tiny_config(task_dir, tiny_model_dir, "ssr", n_shots=7)))
    assert str(refused.value).split("\n") == [
        f"config: field 'tasks.{i}.demos': task '{name}' has 6 demonstrations for SSR synthesis; method.n_shots = 7 "
        "needs at least that many" for i, name in enumerate(("reverse", "upper"))]


def test_theta0_writes_after_an_adapter_was_merged_into_the_weights(tiny_model_dir, new_adapter_run):
    """`train.adapter: new` merges stage 1's adapter into the loaded weights when stage 2 starts;
    the ICL generator must still be θ(0): its logits are those of a freshly loaded base model."""
    from ssr.runner import ModelState, prepare, resolve_settings

    raw, out, _ = new_adapter_run
    cfg = resolve_settings(load_config(None, raw=raw))
    _, method = prepare(cfg)
    first, second = method.plan()
    models = ModelState(cfg, out)
    models.start_stage(second, [first])
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad(), models.icl_generator(4) as (generator, _, _):
        written_by = generator.model(ids).logits
    base = load_base_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(written_by, base(ids).logits)


def test_the_base_model_is_read_once_and_again_only_after_a_merge(tiny_model_dir, new_adapter_run, monkeypatch):
    """ModelState reads θ(0) from disk once; merging stage 1's adapter into the weights (stage 2 of
    `train.adapter: new`) makes the next θ(0) a fresh read, equal to the model on disk; loading an
    adapter onto that fresh copy changes nothing that needs another read."""
    from ssr.runner import ModelState, prepare, resolve_settings

    raw, out, _ = new_adapter_run
    cfg = resolve_settings(load_config(None, raw=raw))
    _, method = prepare(cfg)
    first, second = method.plan()
    reads, real_read = [], ssr.runner.load_base_model
    monkeypatch.setattr(ssr.runner, "load_base_model", lambda *args, **kwargs: reads.append(1) or real_read(*args, **kwargs))
    models = ModelState(cfg, out)
    models.base()
    models.base()
    assert len(reads) == 1
    models.start_stage(second, [first])  # stage 1's adapter merged into the loaded weights
    assert len(reads) == 1
    on_disk = load_base_model(str(tiny_model_dir)).state_dict()
    theta0 = models.base().state_dict()
    assert len(reads) == 2 and all(torch.equal(theta0[k], v) for k, v in on_disk.items())
    models.load_after(first, [])  # stage 1's adapter on the fresh copy, not merged
    models.base()
    assert len(reads) == 2


def test_a_new_adapter_run_resumed_at_stage_3_starts_from_both_earlier_stages_merged(task_dir, tiny_model_dir,
                                                                                    tmp_path, monkeypatch):
    """Killed before stage 3 and resumed in a new process state, a `train.adapter: new` run loads
    stage 1 and 2's adapters from disk, merged in order: its predictions after stage 3 are those of
    base + adapter 1 merged + adapter 2 merged + adapter 3, built here with PEFT directly."""
    from ssr.models import load_tokenizer

    raw = tiny_config(task_dir, tiny_model_dir)
    raw["train"]["adapter"] = "new"
    real_train = ssr.runner.train_stage

    def dies_in_stage_3(model, template, rows, cfg, seed, desc, **kwargs):
        if "3-count" in desc:
            raise KeyboardInterrupt("killed")
        return real_train(model, template, rows, cfg, seed, desc=desc, **kwargs)

    monkeypatch.setattr(ssr.runner, "train_stage", dies_in_stage_3)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(None, raw=raw), tmp_path / "run")
    monkeypatch.setattr(ssr.runner, "train_stage", real_train)
    run(load_config(None, raw=raw), tmp_path / "run")
    model = load_base_model(str(tiny_model_dir))
    for stage in ("1-reverse", "2-upper"):
        model = PeftModel.from_pretrained(model, str(tmp_path / "run" / "stages" / stage / "adapter")).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(tmp_path / "run" / "stages" / "3-count" / "adapter")).eval()
    rows = read_jsonl(tmp_path / "run" / "stages" / "3-count" / "predictions" / "upper.jsonl")
    expected = greedy_raw_by_hand(model, load_tokenizer(str(tiny_model_dir)), "Write the input in upper case.",
                                  [r["input"] for r in rows], 6)
    assert [r["prediction"] for r in rows] == expected


@pytest.mark.parametrize("backend, method, adapter, vllm_adapters, stage, before, serves", [
    ("hf", "sequential", "continue", "lora", "base", "", False),  # the hf backend serves everything itself
    ("vllm", "sequential", "continue", "lora", "base", "", True),  # θ(0): no adapter at all
    ("vllm", "sequential", "continue", "lora", "2", "1", True),  # θ(0) + one adapter, per request
    ("vllm", "sequential", "new", "lora", "1", "", True),  # nothing merged before stage 1
    ("vllm", "sequential", "new", "lora", "2", "1", False),  # stage 1 merged under stage 2's adapter
    ("vllm", "sequential", "new", "lora", "2-fresh", "1", True),  # a fresh stage starts from θ(0)
    ("vllm", "osf", "continue", "lora", "1", "", False),  # OSF's adapters: vLLM cannot load them
    ("vllm", "osf", "continue", "lora", "base", "", True),
    ("vllm", "sequential", "new", "merged", "2", "1", True),  # merged here, reloaded by the engine
    ("vllm", "osf", "continue", "merged", "2", "1", True),
])
def test_which_stages_the_vllm_engine_serves(task_dir, tiny_model_dir, tmp_path, backend, method, adapter, vllm_adapters,
                                             stage, before, serves):
    """ModelState's docstring, case by case: with `lora` adapters vLLM serves θ(0) and each stage
    that is θ(0) plus one LoRA adapter; chains of merged adapters and OSF go to the hf backend;
    a `merged` engine serves every stage."""
    from ssr.methods.base import Stage
    from ssr.runner import BASE_STAGE, ModelState

    raw = tiny_config(task_dir, tiny_model_dir, method, backend=backend)
    raw["train"]["adapter"], raw["generation"]["vllm_adapters"] = adapter, vllm_adapters
    stages = {"base": BASE_STAGE, "1": Stage(1, "1-reverse", ("reverse",)), "2": Stage(2, "2-upper", ("upper",)),
              "2-fresh": Stage(2, "2-upper", ("upper",), fresh=True)}
    state = ModelState(load_config(None, raw=raw), tmp_path)
    assert state._vllm_serves(stages[stage], [stages[s] for s in before.split(",") if s]) is serves


def test_a_lora_engine_leaves_a_chain_of_merged_adapters_to_the_hf_backend(task_dir, tiny_model_dir, tmp_path):
    """`train.adapter: new` under a `lora` engine: stage 2's weights are θ(0) + stage 1's adapter
    merged + stage 2's adapter, which one adapter per request cannot express. Stage 2's generator
    answers as those weights do, merged by hand with PEFT (greedy, token by token)."""
    from ssr.generation import SamplingParams
    from ssr.methods.base import Stage
    from ssr.runner import ModelState

    raw = tiny_config(task_dir, tiny_model_dir, "sequential", tasks=("reverse", "upper"), backend="vllm")
    raw["train"]["adapter"], raw["generation"]["vllm_adapters"] = "new", "lora"
    state = ModelState(load_config(None, raw=raw), tmp_path)
    for seed, stage in enumerate(("1-reverse", "2-upper")):
        save_perturbed_lora(tiny_model_dir, tmp_path / "stages" / stage / "adapter", r=4, alpha=16, seed=seed, noise_seed=seed * 1000)
    prompts = [state.tokenizer(t)["input_ids"] for t in ("abc", "Input: hello\nOutput:")]
    got = state.stage_generator(Stage(2, "2-upper", ("upper",)), [Stage(1, "1-reverse", ("reverse",))]).generate(
        prompts, SamplingParams(max_new_tokens=5))

    model = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(tmp_path / "stages" / "1-reverse" / "adapter"))
    model = PeftModel.from_pretrained(model.merge_and_unload(), str(tmp_path / "stages" / "2-upper" / "adapter")).eval()
    with torch.no_grad():
        expected = [state.tokenizer.decode(model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                                          do_sample=False, max_new_tokens=5)[0, len(p):], skip_special_tokens=True)
                    for p in prompts]
    assert [row[0] for row in got] == expected


def test_resolving_the_settings_leaves_the_caller_s_config_as_written(task_dir, tiny_model_dir):
    """The run directory records the concrete backend, but the config a caller passed (a sweep
    plans many runs from one) keeps `auto`: on another machine it may resolve otherwise."""
    from ssr.runner import resolve_settings

    raw = tiny_config(task_dir, tiny_model_dir, "sequential")
    raw["generation"]["backend"], raw["generation"]["vllm_adapters"] = "auto", "auto"
    cfg = load_config(None, raw=raw)
    resolved = resolve_settings(cfg)
    assert resolved.generation.backend in ("hf", "vllm")
    assert (cfg.generation.backend, cfg.generation.vllm_adapters) == ("auto", "auto")


@pytest.mark.parametrize("backend, adapters", [("vllm", "merged"), ("vllm", "lora"), ("vllm", "auto"), ("hf", "auto")])
def test_the_settings_record_how_vllm_serves_stages_only_for_vllm_runs(task_dir, tiny_model_dir, backend, adapters):
    """`generation.vllm_adapters: auto` is made concrete for a vLLM run (LoRA per request on a GPU,
    merged weights on a CPU: README), as written otherwise; an hf run keeps what was written."""
    from ssr.runner import resolve_settings

    raw = tiny_config(task_dir, tiny_model_dir, "sequential", backend=backend)
    raw["generation"]["vllm_adapters"] = adapters
    resolved = resolve_settings(load_config(None, raw=raw)).generation
    by_hand = {"auto": "lora" if torch.cuda.is_available() else "merged"}.get(adapters, adapters) if backend == "vllm" else adapters
    assert (resolved.backend, resolved.vllm_adapters) == (backend, by_hand)
