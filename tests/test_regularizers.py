"""L2 / EWC (a loss term over the adapter weights) and PEFT's OSF (another adapter type):
penalties against hand computations, the Fisher against a direct estimate, resumption after
the step that writes p_prev / Fisher, and each method end to end on the tiny model."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file, save_file

import ssr.runner
from conftest import tiny_config
from ssr.config import LoraSettings, TrainConfig, load_config
from ssr.errors import ConfigError
from ssr.io import read_jsonl
from ssr.methods import Stage
from ssr.methods.regularizers import QuadraticPenalty, Regularizer, fisher_diagonal
from ssr.models import get_template, load_base_model, load_tokenizer
from ssr.models.lora import attach_lora, is_adapter_weight
from ssr.report import run_label
from ssr.runner import ModelState, RunContext, run
from ssr.sweep import run_sweep

TASKS = ["reverse", "upper", "count"]
TWO = ("reverse", "upper")


def _run(task_dir, model_dir, out, method="sequential", tasks=TASKS, train=None, **opts):
    raw = tiny_config(task_dir, model_dir, method, tasks=tasks, **opts)
    raw["train"].update(train or {})
    return run(load_config(None, raw=raw), out)


def _tiny_peft(model_dir):
    """The tiny model with a LoRA adapter whose weights are all non-zero (B starts at zero)."""
    model = attach_lora(load_base_model(str(model_dir)), LoraSettings(), seed=0)
    params = {n: p for n, p in model.named_parameters() if is_adapter_weight(n)}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params.values():
            p.copy_(0.1 * torch.randn(p.shape, generator=g).to(p.device))  # the model sits on the GPU where there is one
    return model, params


def _upper_rows(task_dir) -> list[dict]:
    """The `upper` toy task's training rows as a stage trains on them."""
    return [{"definition": "Write the input in upper case.", "input": r["input"], "output": r["output"]}
            for r in read_jsonl(task_dir / "upper.train.jsonl")]


def _adapter_weights(run_dir, stage):
    """A saved adapter's weights under the names they have in the loaded PEFT model."""
    saved = load_file(str(run_dir / "stages" / stage / "adapter" / "adapter_model.safetensors"))
    return {k.replace(".weight", ".default.weight"): v for k, v in saved.items()}


def test_penalty_by_hand_on_two_numbers():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    anchor, fisher = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0])
    l2 = QuadraticPenalty([p], [anchor], None, 0.1)()  # 0.1 * (1 + 4)
    assert l2.item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(l2, p)  # 2 * 0.1 * (p - 0)
    assert grad.tolist() == pytest.approx([0.2, 0.4])
    ewc = QuadraticPenalty([p], [anchor], [fisher], 0.1)()  # 0.1 * (1*1 + 3*4)
    assert ewc.item() == pytest.approx(1.3)
    (grad,) = torch.autograd.grad(ewc, p)
    assert grad.tolist() == pytest.approx([0.2, 1.2])
    # bf16 weights: the float32 anchors and Fisher (as stored) are cast once to the weights' dtype
    q = torch.tensor([1.0, 2.0], dtype=torch.bfloat16, requires_grad=True)
    for weights in (None, [fisher]):
        penalty = QuadraticPenalty([q], [anchor], weights, 0.1)
        assert {t.dtype for t in penalty.anchors + (penalty.weights or [])} == {torch.bfloat16}
        assert penalty().dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["l2", "ewc"])
def test_penalty_from_a_stage_file_matches_a_hand_computation(tiny_model_dir, task_dir, tmp_path, kind):
    """The file a stage leaves behind becomes the next stage's loss term over the same weights."""
    model, params = _tiny_peft(tiny_model_dir)
    g = torch.Generator().manual_seed(2)
    anchors = {n: p.detach() + 0.05 * torch.randn(p.shape, generator=g).to(p.device) for n, p in params.items()}
    fisher = {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in params.items()}
    state = {f"anchor.{n}": a for n, a in anchors.items()} | {f"fisher.{n}": f for n, f in fisher.items()}
    (tmp_path / "regularizer").mkdir()
    save_file(state, str(tmp_path / "regularizer" / "1-reverse.safetensors"))
    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir, kind, reg_lambda=0.3))
    ctx = RunContext(cfg, tmp_path, [], ModelState(cfg, tmp_path))
    penalty = Regularizer(kind, cfg.method, cfg.train, cfg.seed).penalty(ctx, Stage(1, "1-reverse", ("reverse",)), params)

    value = penalty()
    value.backward()
    expected, grads = 0.0, {}
    for n, p in params.items():  # numpy, float64: λ Σ w (p − a)², gradient 2 λ w (p − a)
        diff = p.detach().cpu().numpy().astype(np.float64) - anchors[n].cpu().numpy()
        w = fisher[n].cpu().numpy().astype(np.float64) if kind == "ewc" else 1.0
        expected += 0.3 * float((w * diff**2).sum())
        grads[n] = 2 * 0.3 * w * diff
    assert value.item() == pytest.approx(expected, rel=1e-5)
    for n, p in params.items():
        np.testing.assert_allclose(p.grad.cpu().numpy(), grads[n], rtol=1e-4, atol=1e-8)


def test_fisher_is_the_mean_squared_gradient_of_single_examples(tiny_model_dir, task_dir):
    model, params = _tiny_peft(tiny_model_dir)
    template = get_template("raw", load_tokenizer(str(tiny_model_dir)))
    rows = _upper_rows(task_dir)[:5]
    cfg = TrainConfig(max_source_length=12, max_target_length=16)  # prompts are cut: the limit is obeyed
    assert all(len(template.prompt_ids(r["definition"], r["input"])) > 12 for r in rows)
    widths = []  # the loss projects onto the vocabulary only the positions that predict a response token
    model.get_base_model().lm_head.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
    fisher = fisher_diagonal(model, params, template, rows, cfg)
    assert widths == [len(template.target_ids(r["output"], 16)) for r in rows]  # one position per response token

    # directly: transformers' own loss on one example at a time, gradients via .backward()
    model.eval()
    direct = {n: torch.zeros_like(p) for n, p in params.items()}
    for row in rows:
        prompt = template.prompt_ids(row["definition"], row["input"], cfg.max_source_length)
        target = template.target_ids(row["output"], cfg.max_target_length)
        model.zero_grad()
        device = next(model.parameters()).device
        model(input_ids=torch.tensor([prompt + target], device=device),
              labels=torch.tensor([[-100] * len(prompt) + target], device=device)).loss.backward()
        for n, p in params.items():
            direct[n] += p.grad**2
    assert fisher.keys() == params.keys()
    assert all(direct[n].abs().sum() > 0 for n in params)  # every weight gets a non-trivial estimate
    for n in params:
        torch.testing.assert_close(fisher[n], direct[n] / len(rows), rtol=1e-4, atol=1e-12)
    # squared gradients of bf16 weights are summed in float32, not rounded to bf16 at every row
    model.to(torch.bfloat16)
    live = {n: p for n, p in model.named_parameters() if n in params}
    assert {p.dtype for p in live.values()} == {torch.bfloat16}
    assert {f.dtype for f in fisher_diagonal(model, live, template, rows[:2], cfg).values()} == {torch.float32}


def test_an_ewc_stage_file_holds_the_anchor_and_the_fisher_of_its_seeded_sample(tiny_model_dir, task_dir, tmp_path):
    """After stage i: p_prev and the Fisher of `fisher_samples` of the stage's training rows,
    drawn with random.Random(seed + i) (worked out here), in a file that says what it holds."""
    import random

    from safetensors import safe_open

    model, params = _tiny_peft(tiny_model_dir)
    template = get_template("raw", load_tokenizer(str(tiny_model_dir)))
    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir, "ewc", fisher_samples=4))
    rows = _upper_rows(task_dir)
    stage_dir = tmp_path / "stages" / "2-upper"
    stage_dir.mkdir(parents=True)
    (stage_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = SimpleNamespace(run_dir=tmp_path, stage_dir=lambda stage: tmp_path / "stages" / stage.name,
                          models=SimpleNamespace(template=template))
    Regularizer("ewc", cfg.method, cfg.train, cfg.seed).after_stage(Stage(2, "2-upper", ("upper",)), ctx, model, params, None)
    path = tmp_path / "regularizer" / "2-upper.safetensors"
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"kind": "ewc", "stage": "2-upper"}
    saved = load_file(str(path))
    chosen = sorted(random.Random(cfg.seed + 2).sample(range(len(rows)), 4))
    want = fisher_diagonal(model, params, template, [rows[i] for i in chosen], cfg.train)
    other = fisher_diagonal(model, params, template, [rows[i] for i in range(4)], cfg.train)
    assert any(not torch.allclose(want[n], other[n]) for n in params)  # which rows are drawn shows
    for n, p in params.items():
        assert torch.equal(saved[f"anchor.{n}"], p.detach().float().cpu())
        torch.testing.assert_close(saved[f"fisher.{n}"], want[n].cpu())


def test_a_stage_file_lacking_weights_is_refused_by_name(tiny_model_dir, tmp_path):
    model, params = _tiny_peft(tiny_model_dir)
    names = list(params)
    (tmp_path / "regularizer").mkdir()
    path = tmp_path / "regularizer" / "1-reverse.safetensors"
    save_file({f"anchor.{n}": params[n].detach().cpu().contiguous() for n in names[2:]}, str(path))
    regularizer = Regularizer("l2", load_config(None, raw={"tasks": [{"name": "a"}]}).method, TrainConfig(), 0)
    with pytest.raises(RuntimeError) as err:
        regularizer.penalty(SimpleNamespace(run_dir=tmp_path), Stage(1, "1-reverse", ("reverse",)), params)
    assert str(err.value) == f"{path} lacks 2 trainable weights, e.g. {names[0]}"


@pytest.mark.parametrize(
    "method, opts",
    [("l2", {}), ("ewc", {"fisher_samples": 5}), ("replay", {"selection": "random", "per_task": 3, "regularizer": "ewc"})],
    ids=["l2", "ewc", "replay+ewc"],
)
def test_regularised_methods_end_to_end(task_dir, tiny_model_dir, tmp_path, method, opts):
    out = tmp_path / "run"
    results = _run(task_dir, tiny_model_dir, out, method, tasks=TWO, **opts)
    assert results["method"] == method and len(results["scores"]) == 3 and results["BWT"] is not None
    kind = "l2" if method == "l2" else "ewc"
    # p_prev (and the Fisher) after every stage but the last: exactly the stage's adapter weights
    assert [p.name for p in (out / "regularizer").iterdir()] == ["1-reverse.safetensors"]
    for stage in ("1-reverse",):
        state = load_file(str(out / "regularizer" / f"{stage}.safetensors"))
        adapter = _adapter_weights(out, stage)
        assert {k.removeprefix("anchor.") for k in state if k.startswith("anchor.")} == adapter.keys()
        for name, weight in adapter.items():
            assert torch.equal(state[f"anchor.{name}"], weight)
        fisher = {k: v for k, v in state.items() if k.startswith("fisher.")}
        assert (len(fisher) == len(adapter)) == (kind == "ewc")
        assert all((f >= 0).all() for f in fisher.values()) and (kind == "l2" or any(f.sum() > 0 for f in fisher.values()))
    stats = results["train_stats"]
    assert "final_penalty" not in stats["1-reverse"] and stats["2-upper"]["final_penalty"] >= 0
    if method == "replay":
        assert any(r["source"] == "replay" for r in read_jsonl(out / "stages" / "2-upper" / "train.jsonl"))
        assert run_label(results, (out / "config.yaml").read_text()) == "replay (random, 3/task) + ewc"


def test_l2_holds_the_adapter_near_the_previous_stage(task_dir, tiny_model_dir, tmp_path):
    """The penalty reaches the optimiser: a strong L2 keeps stage 2 close to stage 1."""
    train = {"lr": 1e-2, "epochs": 2}
    tasks = TWO
    moved = {}
    for method, opts in (("sequential", {}), ("l2", {"reg_lambda": 100.0})):
        out = tmp_path / method
        _run(task_dir, tiny_model_dir, out, method, tasks=tasks, train=train, **opts)
        before, after = _adapter_weights(out, "1-reverse"), _adapter_weights(out, "2-upper")
        moved[method] = sum(float((after[n] - before[n]).pow(2).sum()) for n in before) ** 0.5
    assert moved["l2"] < 0.5 * moved["sequential"]


def test_fisher_accumulates_only_when_asked(task_dir, tiny_model_dir, tmp_path):
    fisher = {}
    for accumulate in (False, True):
        out = tmp_path / str(accumulate)
        _run(task_dir, tiny_model_dir, out, "ewc", fisher_samples=6, fisher_accumulate=accumulate)
        fisher[accumulate] = {s: load_file(str(out / "regularizer" / f"{s}.safetensors")) for s in ("1-reverse", "2-upper")}
    own, summed = fisher[False], fisher[True]
    for key in (k for k in own["2-upper"] if k.startswith("fisher.")):
        torch.testing.assert_close(summed["1-reverse"][key], own["1-reverse"][key])
        torch.testing.assert_close(summed["2-upper"][key], own["2-upper"][key] + own["1-reverse"][key])


@pytest.fixture(scope="module")
def straight_ewc(task_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "ewc"
    return out, _run(task_dir, tiny_model_dir, out, "ewc", tasks=TWO, fisher_samples=6)


@pytest.mark.parametrize("dies_in", ["train 2-upper", "regularizer 1-reverse"])
def test_a_killed_ewc_run_resumes_to_the_uninterrupted_result(task_dir, tiny_model_dir, tmp_path, monkeypatch, straight_ewc, dies_in):
    """Killed right after the step that writes p_prev / Fisher, or inside it: the rerun reads
    (or recomputes from the saved adapter) the same state and ends where a straight run ends."""
    out = tmp_path / "run"
    real_train, real_after = ssr.runner.train_stage, Regularizer.after_stage

    def train(*args, **kwargs):
        if kwargs["desc"] == dies_in:
            raise KeyboardInterrupt("killed")
        return real_train(*args, **kwargs)

    def after(self, stage, *args):
        if f"regularizer {stage.name}" == dies_in:
            raise KeyboardInterrupt("killed")
        return real_after(self, stage, *args)

    monkeypatch.setattr(ssr.runner, "train_stage", train)
    monkeypatch.setattr(Regularizer, "after_stage", after)
    with pytest.raises(KeyboardInterrupt):
        _run(task_dir, tiny_model_dir, out, "ewc", tasks=TWO, fisher_samples=6)
    state = out / "regularizer" / "1-reverse.safetensors"
    assert state.exists() == (dies_in == "train 2-upper") and not (out / "stages" / "2-upper" / "adapter").exists()
    assert not list(out.glob("regularizer/.*"))  # nothing half-written left behind
    stamp = state.stat().st_mtime_ns if state.exists() else None

    monkeypatch.setattr(ssr.runner, "train_stage", real_train)
    monkeypatch.setattr(Regularizer, "after_stage", real_after)
    resumed = _run(task_dir, tiny_model_dir, out, "ewc", tasks=TWO, fisher_samples=6)
    if stamp is not None:
        assert state.stat().st_mtime_ns == stamp  # read back, not recomputed
    straight_dir, straight = straight_ewc
    assert resumed["scores"] == straight["scores"]
    got, want = (load_file(str(d / "regularizer" / "1-reverse.safetensors")) for d in (out, straight_dir))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-10)
    for stage in ("1-reverse", "2-upper"):
        assert (out / "stages" / stage / "train_stats.json").exists()
        got, want = _adapter_weights(out, stage), _adapter_weights(straight_dir, stage)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_osf_end_to_end_through_peft(task_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    results = _run(task_dir, tiny_model_dir, out, "osf")
    assert results["method"] == "osf" and results["BWT"] is not None and not (out / "regularizer").exists()
    ranks = []
    for i, t in enumerate(TASKS, 1):
        config = PeftConfig.from_pretrained(str(out / "stages" / f"{i}-{t}" / "adapter"))
        assert config.peft_type == "OSF" and sorted(config.target_modules) == ["q_proj", "v_proj"]
        ranks.append(config.effective_rank)
        assert all("osf_svd_params" in k for k in _adapter_weights(out, f"{i}-{t}"))
    assert ranks == [0.3, 0.5, 0.7]  # more of the weights frozen with every task (PEFT's example)

    # each stage's adapter is merged before the next is attached: the runner's model after
    # stage 3 is base + adapter 1 merged + adapter 2 merged + adapter 3, rebuilt here by hand
    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir, "osf"))
    plan = [Stage(i, f"{i}-{t}", (t,), fresh=i == 1) for i, t in enumerate(TASKS, 1)]
    with torch.no_grad():
        runner_model = ModelState(cfg, out).load_after(plan[-1], plan[:-1])
        device = next(runner_model.parameters()).device  # the GPU where there is one
        x = torch.tensor([[5, 17, 42, 8, 99, 3]], device=device)
        runner_logits = runner_model(input_ids=x).logits
        by_hand = load_base_model(str(tiny_model_dir)).to(device)
        for stage in plan:
            by_hand = PeftModel.from_pretrained(by_hand, str(out / "stages" / stage.name / "adapter")).merge_and_unload()
        torch.testing.assert_close(runner_logits, by_hand(input_ids=x).logits, rtol=1e-4, atol=1e-5)
        last_only = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)).to(device), str(out / "stages" / "3-count" / "adapter"))
        assert not torch.allclose(runner_logits, last_only(input_ids=x).logits, atol=1e-5)  # the chain matters

    # reloading that chain from disk gives the predictions the in-memory model gave
    first = {p: p.read_text() for p in sorted((out / "stages").glob("[123]-*/predictions/*.jsonl"))}
    for p in first:
        p.unlink()
    (out / "results.json").unlink()
    again = _run(task_dir, tiny_model_dir, out, "osf")
    assert again["scores"] == results["scores"]
    assert {p: p.read_text() for p in first} == first


def test_osf_ranks_from_the_config(task_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _run(task_dir, tiny_model_dir, out, "osf", tasks=TWO, osf_effective_rank=[0.25, 0.75])
    assert [PeftConfig.from_pretrained(str(out / "stages" / s / "adapter")).effective_rank for s in ("1-reverse", "2-upper")] == [0.25, 0.75]


@pytest.mark.parametrize(
    "method, opts, train, message",
    [
        ("mtl", {"regularizer": "ewc"}, {}, "method.regularizer applies to sequential, replay and ssr, not mtl"),
        ("single", {"regularizer": "l2"}, {}, "not single"),
        ("osf", {"regularizer": "l2"}, {}, "not osf"),
        ("l2", {"regularizer": "ewc"}, {}, "method l2 is sequential \\+ the l2 regulariser"),
        ("ewc", {}, {"adapter": "new"}, "needs train.adapter: continue"),
        ("sequential", {"regularizer": "l2"}, {"adapter": "new"}, "needs train.adapter: continue"),
        ("osf", {"osf_effective_rank": [0.3]}, {}, "one value per task \\(3\\), got 1"),
        ("osf", {"osf_effective_rank": [0.3, 1.0, 0.5]}, {}, "fraction in \\(0, 1\\)"),
        ("sequential", {"osf_effective_rank": [0.3, 0.4, 0.5]}, {}, "only applies to osf"),
    ],
)
def test_meaningless_combinations_are_refused(task_dir, tiny_model_dir, method, opts, train, message):
    raw = tiny_config(task_dir, tiny_model_dir, method, **opts)
    raw["train"].update(train)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, raw=raw)
    assert "\n" not in str(err.value)


def test_sweep_runs_the_new_variants_and_shares_stage_1_with_l2_and_ewc(task_dir, tiny_model_dir, tmp_path):
    raw = tiny_config(task_dir, tiny_model_dir, tasks=TWO)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sweep"
    summary = run_sweep(config, ["sequential", "l2", "ewc", "osf"], out, echo=lambda *_: None)
    assert [row["variant"] for row in summary] == ["sequential", "l2", "ewc", "osf"] and all(row["runs"] == 1 for row in summary)

    def shared(variant):
        lines = (out / variant / "timings.jsonl").read_text().splitlines()
        return any("shared_from" in json.loads(line) for line in lines)

    assert shared("l2") and shared("ewc") and not shared("osf")  # OSF's stage 1 is another adapter
    assert yaml.safe_load((out / "ewc" / "config.yaml").read_text())["method"]["name"] == "ewc"
