"""The stage loop: evaluate the base model, then for each stage train, evaluate, keep.

Every step writes its result atomically into the run directory before the next begins, and
every step is skipped when its result is already there, so rerunning the same command after a
crash continues where it stopped:

    <out>/config.yaml                      the resolved config (a different one is refused)
    <out>/stages/0-base/predictions/<task>.jsonl
    <out>/stages/<i>-<name>/train.jsonl    what the stage learnt (`task`, `source` per row)
    <out>/stages/<i>-<name>/adapter/       PEFT adapter (its presence marks a trained stage)
    <out>/stages/<i>-<name>/predictions/<task>.jsonl
    <out>/regularizer/<i>-<name>.safetensors   p_prev (and Fisher) for L2 / EWC, after each stage
    <out>/results.json                     score matrix, AR / FWT / BWT
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from ssr import config as config_mod
from ssr.config import RunConfig
from ssr.data import Task, load_task
from ssr.errors import RunDirError
from ssr.evaluation import evaluate_task, score_predictions
from ssr.generation import HFGenerator
from ssr.io import read_jsonl, write_json, write_jsonl, write_text
from ssr.methods import Method, Stage, get_method
from ssr.models.lora import attach_adapter, is_adapter_weight, load_adapter, merges_between_stages, save_adapter
from ssr.models.loading import load_base_model, load_tokenizer
from ssr.models.templates import get_template
from ssr.training import train_stage

log = logging.getLogger("ssr")

BASE_STAGE = Stage(0, "0-base", (), fresh=True)


@dataclass
class RunContext:
    """What a method may use during a run: config, tasks, run directory and the models."""

    cfg: RunConfig
    run_dir: Path
    tasks: list[Task]
    models: ModelState = field(repr=False)

    def stage_dir(self, stage: Stage) -> Path:
        return self.run_dir / "stages" / stage.name

    @contextmanager
    def timed(self, step: str):
        """Record the wall time of a completed step in timings.jsonl (summed over reruns)."""
        started = time.perf_counter()
        yield
        line = json.dumps({"step": step, "seconds": round(time.perf_counter() - started, 2)})
        with open(self.run_dir / "timings.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")


class ModelState:
    """The base model and the adapter currently on it, loaded lazily (a finished run loads nothing).

    With `train.adapter: continue` one PEFT adapter lives on the base model across stages;
    the base model θ(0) stays available through `disable_adapter()`. With `new` (and always
    for OSF), each finished adapter is merged into the weights before a fresh one is attached.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.model = None  # the base model, or a PeftModel over it
        self.at_stage: str | None = None  # which stage's weights `model` holds
        self.base_modified = False  # True once an adapter was merged into the weights

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.model.name, self.cfg.model.cache_dir)

    @cached_property
    def template(self):
        return get_template(self.cfg.model.template, self.tokenizer)

    def _base(self):
        if self.model is None:
            self.model = load_base_model(self.cfg.model.name, self.cfg.model.cache_dir)
        elif hasattr(self.model, "peft_config"):
            self.model = self.model.unload()  # drop LoRA layers, keep base weights
        if self.base_modified:
            self.model = load_base_model(self.cfg.model.name, self.cfg.model.cache_dir)
            self.base_modified = False
        self.at_stage = BASE_STAGE.name
        return self.model

    def base(self):
        """The model before any training (row 0 of the matrix)."""
        return self._base() if self.at_stage != BASE_STAGE.name else self.model

    def start_stage(self, stage: Stage, previous: list[Stage]):
        """The trainable model a stage starts from: fresh LoRA, or the previous stage's adapter."""
        if stage.fresh or not previous:
            return self._attach(self._base(), stage)
        self.load_after(previous[-1], previous[:-1], trainable=True)
        if merges_between_stages(self.cfg):
            self.model = self.model.merge_and_unload()
            self.base_modified = True
            return self._attach(self.model, stage)
        for param in self.adapter_parameters().values():  # it may have been loaded frozen for evaluation
            param.requires_grad_(True)
        return self.model

    def _attach(self, base, stage: Stage):
        self.model = attach_adapter(base, self.cfg, stage.index, self.cfg.seed + stage.index)
        return self.model

    def adapter_parameters(self) -> dict:
        """The adapter weights of the loaded model by name: what a stage trains, what L2 / EWC anchor."""
        return {name: p for name, p in self.model.named_parameters() if is_adapter_weight(name)}

    def load_after(self, stage: Stage, before: list[Stage], trainable: bool = False):
        """The model as it was right after `stage` (loading adapters from disk if needed)."""
        if self.at_stage == stage.name:
            return self.model
        chain = [*before, stage] if merges_between_stages(self.cfg) and not stage.fresh else [stage]
        model = self._base()
        for i, s in enumerate(chain):
            model = load_adapter(model, self.run_dir / "stages" / s.name / "adapter", trainable=trainable and i == len(chain) - 1)
            if i < len(chain) - 1:
                model = model.merge_and_unload()
                self.base_modified = True
        self.model, self.at_stage = model, stage.name
        return model

    def finished(self, stage: Stage) -> None:
        self.at_stage = stage.name

    def generator(self, model=None, batch_size: int | None = None, tokenizer=None) -> HFGenerator:
        return HFGenerator(model or self.model, tokenizer or self.tokenizer, batch_size or self.cfg.eval.batch_size)

    @contextmanager
    def icl_model(self):
        """(model, tokenizer) that writes synthetic instances: the base model θ(0), never a
        fine-tuned one (or `method.icl_model` when set). With a continued adapter, θ(0) is the
        loaded model with its adapter disabled; otherwise a separate copy is loaded."""
        name = self.cfg.method.icl_model
        if name is None and hasattr(self.model, "disable_adapter") and not self.base_modified:
            with self.model.disable_adapter():
                yield self.model, self.tokenizer
            return
        if name is None and self.model is not None and self.at_stage == BASE_STAGE.name and not self.base_modified:
            yield self.model, self.tokenizer
            return
        name = name or self.cfg.model.name
        yield load_base_model(name, self.cfg.model.cache_dir), load_tokenizer(name, self.cfg.model.cache_dir)


class RunDir:
    """The output directory: holds one run; refuses a different config."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def claim(self, cfg: RunConfig) -> None:
        saved = self.path / "config.yaml"
        current = config_mod.to_dict(cfg)
        if saved.exists():
            previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
            changes = config_mod.diff(previous, current)
            if changes:
                raise RunDirError(
                    f"{self.path} holds a run with a different config; use another --output-dir "
                    f"or delete it. Differences (saved -> now): " + "; ".join(changes)
                )
        write_text(saved, config_mod.to_yaml(cfg))


def setup_logging(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def evaluate_stage(ctx: RunContext, stage: Stage, tasks: list[str], get_model) -> dict[str, float]:
    """Predictions of the stage's model on `tasks`; cached per task file. Returns ROUGE-L x 100."""
    scores = {}
    pred_dir = ctx.stage_dir(stage) / "predictions"
    for name in tasks:
        path = pred_dir / f"{name}.jsonl"
        if not path.exists():
            task = next(t for t in ctx.tasks if t.name == name)
            cfg = ctx.cfg
            with ctx.timed(f"eval {stage.name} {name}"):
                rows = evaluate_task(ctx.models.generator(get_model()), ctx.models.template, task,
                                     cfg.train.max_source_length, task.max_new_tokens)
                write_jsonl(path, rows)
            log.info("stage %s, task %s: ROUGE-L %.2f", stage.name, name, score_predictions(rows)["rougeL"])
        scores[name] = score_predictions(read_jsonl(path))["rougeL"]
    return scores


def run(cfg: RunConfig, output_dir: str | Path) -> dict:
    """Run (or resume) a whole continual-learning sequence; returns the results dict."""
    run_dir = Path(output_dir)
    RunDir(run_dir).claim(cfg)
    handler = setup_logging(run_dir)
    try:
        return _run(cfg, run_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _run(cfg: RunConfig, run_dir: Path) -> dict:
    tasks = [load_task(t, cfg.data, cfg.method.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens) for t in cfg.tasks]
    method: Method = get_method(cfg.method.name)(cfg, tasks)
    ctx = RunContext(cfg, run_dir, tasks, ModelState(cfg, run_dir))
    log.info("run %s: method %s, tasks %s", run_dir, method.name, [t.name for t in tasks])

    all_names = [t.name for t in tasks]
    stage_scores = {0: evaluate_stage(ctx, BASE_STAGE, all_names, ctx.models.base)}
    stage_stats = {}
    plan = method.plan()
    for k, stage in enumerate(plan):
        sdir = ctx.stage_dir(stage)
        adapter_dir = sdir / "adapter"
        reg = method.regularizer
        if not adapter_dir.exists():
            model = ctx.models.start_stage(stage, plan[:k])
            rows = method.training_rows(stage, ctx)
            write_jsonl(sdir / "train.jsonl", rows)
            log.info("stage %s: training on %d rows (%s)", stage.name, len(rows), _sources(rows))
            penalty = reg.penalty(ctx, plan[k - 1], ctx.models.adapter_parameters()) if reg and k > 0 else None
            with ctx.timed(f"train {stage.name}"):
                stats = train_stage(model, ctx.models.template, rows, cfg.train, cfg.seed + stage.index,
                                    desc=f"train {stage.name}", penalty=penalty)
                save_adapter(model, adapter_dir)
            write_json(sdir / "train_stats.json", stats)
            ctx.models.finished(stage)
            log.info("stage %s: %s", stage.name, stats)

        def stage_model(stage=stage, before=plan[:k]):
            return ctx.models.load_after(stage, before)

        if reg and reg.pending_after(stage, ctx, last=k == len(plan) - 1):
            with ctx.timed(f"regularizer {stage.name}"):  # p_prev (and Fisher) for the next stage
                reg.after_stage(stage, ctx, stage_model(), ctx.models.adapter_parameters(), plan[k - 1] if k > 0 else None)

        stage_scores[stage.index] = evaluate_stage(ctx, stage, list(stage.evaluate), stage_model)
        if method.pending_after(stage, ctx):
            if method.needs_model_after(stage, ctx):
                stage_model()
            with ctx.timed(f"after {stage.name}"):
                method.after_stage(stage, ctx)
        stats_path = sdir / "train_stats.json"
        if stats_path.exists():
            stage_stats[stage.name] = json.loads(stats_path.read_text())

    scores = method.matrix(stage_scores)
    results = {
        "method": method.name,
        "tasks": all_names,
        "scores": scores,
        **method.metrics(scores),
        "exact_match": _exact_match_matrix(ctx, method, plan),
        "train_stats": stage_stats,
        "wall_seconds": wall_seconds(run_dir),
    }
    write_json(run_dir / "results.json", results)
    log.info("results: AR %s FWT %s BWT %s", results["AR"], results["FWT"], results["BWT"])
    return results


def _exact_match_matrix(ctx: RunContext, method: Method, plan: list[Stage]) -> dict[str, dict[str, float]]:
    out = {}
    for stage in [BASE_STAGE, *plan]:
        pred_dir = ctx.stage_dir(stage) / "predictions"
        out[stage.name] = {p.stem: score_predictions(read_jsonl(p))["exact_match"] for p in sorted(pred_dir.glob("*.jsonl"))}
    return out


def share_first_stage(source: Path, cfg: RunConfig, target: Path) -> bool:
    """Copy the base evaluation and stage 1 of a finished run into a new run of another method.

    Stage 1 is plain fine-tuning on task 1 for every continual method (sequential, replay,
    ssr, l2, ewc: a regulariser starts at stage 2): with the same config apart from `method.*`, it is the same computation (same rows,
    seeds and data order; a test checks the adapters are identical), so it is reused, not
    redone. The copied steps' timings come along, so wall times stay comparable.
    Returns whether anything was copied.
    """
    import shutil

    continual = ("sequential", "replay", "ssr", "l2", "ewc")  # stage 1 has no penalty yet
    saved = source / "config.yaml"
    if not saved.exists() or cfg.method.name not in continual or (target / "stages").exists():
        return False
    previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
    if previous["method"]["name"] not in continual:
        return False
    if any(not line.startswith("method.") for line in config_mod.diff(previous, config_mod.to_dict(cfg))):
        return False
    first = f"1-{cfg.tasks[0].name}"
    if not (source / "stages" / first / "adapter").exists():
        return False
    for name in (BASE_STAGE.name, first):
        shutil.copytree(source / "stages" / name, target / "stages" / name)
    timings = source / "timings.jsonl"
    if timings.exists():
        steps = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
        copied = [{**s, "shared_from": str(source)} for s in steps
                  if s["step"].split(" ")[:2] in (["eval", BASE_STAGE.name], ["eval", first], ["train", first])]
        (target / "timings.jsonl").write_text("".join(json.dumps(s) + "\n" for s in copied))
    log.info("reused %s and %s from %s", BASE_STAGE.name, first, source)
    return True


def wall_seconds(run_dir: Path, own_only: bool = False) -> float:
    """Seconds spent on the run's steps, summed over reruns; `own_only` leaves out the steps
    copied from another run by `share_first_stage` (to total a sweep without counting them twice)."""
    path = run_dir / "timings.jsonl"
    if not path.exists():
        return 0.0
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return round(sum(s["seconds"] for s in steps if not (own_only and "shared_from" in s)), 1)


def _sources(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        key = f"{r['task']}/{r['source']}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


__all__ = ["run", "RunContext", "ModelState", "RunDir", "evaluate_stage", "share_first_stage", "wall_seconds"]
