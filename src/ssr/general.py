"""General abilities of a stage's model (`eval.general`): what continual fine-tuning on narrow
tasks costs a chat model beyond those tasks (the paper's Table 3: MMLU and AlpacaEval of
Alpaca-7b before and after five SuperNI stages).

Two measurements, both on the model as it was right after a stage (base weights + that stage's
adapter, loaded by `ModelState`, the one owner of the weights):

- `lm_eval`: lm-evaluation-harness (`pip install -e .[general]`) on any task it knows (MMLU
  5-shot as in the paper) or on local task YAMLs (`include_path`), through its `HFLM` wrapping
  the already-loaded model, so the adapter is the stage's own and nothing is reloaded.
- `instructions`: a configured task's held-out eval split (the built-in `general` set, or the
  user's own Alpaca-style file) answered greedily through the training template and scored by
  ROUGE-L against its reference answers: an instruction-following score without a judge model.
  `judge: module:function` adds the user's own judge (e.g. an LLM grading each answer).

Each stage's result is written to `stages/<stage>/general.json` (a resumable step) and
collected under `general` in results.json, base model first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssr.config import GeneralEvalConfig, LmEvalConfig
from ssr.evaluation import score_predictions
from ssr.io import read_jsonl, write_json

if TYPE_CHECKING:
    from ssr.methods import Stage
    from ssr.runner import RunContext

log = logging.getLogger(__name__)

PACKAGED_TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
"""lm-eval task YAMLs shipped with the project (`ssr_general_mc`), always on the include path."""


def general_stages(general: GeneralEvalConfig, plan: list[Stage]) -> list[str]:
    """Names of the stages measured after training (the base model, "0-base", is always measured)."""
    if general.stages == "all":
        return [s.name for s in plan]
    if general.stages == "last":
        return [plan[-1].name]
    return [plan[i - 1].name for i in sorted(set(general.stages)) if i > 0]


def metric_values(task_results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's per-task numbers without its bookkeeping: `acc,none` becomes `acc`, a filter
    other than `none` stays in the name (`exact_match,strict-match`); stderr only when computed."""
    out = {}
    for key, value in task_results.items():
        if key in ("alias", "sample_len") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt in ("", "none") else key] = float(value)
    return out


def run_lm_eval(model, tokenizer, cfg: LmEvalConfig, seed: int, max_length: int | None = None) -> dict[str, Any]:
    """lm-evaluation-harness on an already-loaded model (a PeftModel carries its adapter).

    Returns `{"tasks": {name: {metric: value}}, "n_samples": {...}, "version": ...}`. lm-eval's
    own task catalogue is indexed only when a task is not found in `include_path` or the
    packaged tasks (indexing thousands of YAMLs takes seconds)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise RuntimeError("eval.general.lm_eval needs lm-evaluation-harness: pip install -e '.[general]'") from err

    include = [str(PACKAGED_TASKS), *cfg.include_path]
    manager = TaskManager(include_path=include, include_defaults=False)
    if any(t not in manager.all_tasks and not Path(t).is_file() for t in cfg.tasks):
        manager = TaskManager(include_path=include)
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, max_length=max_length)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit, task_manager=manager,
            apply_chat_template=cfg.apply_chat_template, log_samples=False, bootstrap_iters=0,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    finally:
        if was_training:
            model.train()
    return {
        "tasks": {name: metric_values(values) for name, values in results["results"].items()},
        "n_samples": {name: n.get("effective") for name, n in results.get("n-samples", {}).items()},
        "version": getattr(lm_eval, "__version__", None),
    }


def instruction_following(ctx: RunContext, stage: Stage, task_name: str, judge: str | None) -> dict[str, Any]:
    """ROUGE-L (and exact match) of the stage's answers to `task_name`'s held-out instructions,
    from the same cached predictions as the score matrix; plus the judge's mean score if given."""
    from ssr.runner import evaluate_stage

    evaluate_stage(ctx, stage, [task_name])
    rows = read_jsonl(ctx.stage_dir(stage) / "predictions" / f"{task_name}.jsonl")
    scores = score_predictions(rows)
    out: dict[str, Any] = {"task": task_name, "rougeL": scores["rougeL"], "exact_match": scores["exact_match"], "n": scores["n"]}
    if judge is not None:
        from ssr.synthesis.screen import load_callable

        task = next(t for t in ctx.tasks if t.name == task_name)
        by_id = {inst.id: inst for inst in task.eval}
        items = [{"instruction": by_id[r["id"]].definition, "input": r["input"], "reference": r["target"],
                  "prediction": r["prediction"]} for r in rows]
        grades = [float(g) for g in load_callable(judge)(items)]
        if len(grades) != len(items):
            raise ValueError(f"eval.general.judge {judge} returned {len(grades)} scores for {len(items)} answers")
        out["judge"] = sum(grades) / max(len(grades), 1)
    return out


def evaluate_general(ctx: RunContext, stage: Stage, before: list[Stage]) -> dict[str, Any]:
    """The general-ability scores of the model right after `stage` (cached in its general.json)."""
    general = ctx.cfg.eval.general
    path = ctx.stage_dir(stage) / "general.json"
    if path.exists():
        return read_json(path)
    out: dict[str, Any] = {}
    with ctx.timed(f"general {stage.name}"):
        if general.instructions is not None:
            out["instructions"] = instruction_following(ctx, stage, general.instructions, general.judge)
        if general.lm_eval is not None:
            log.info("stage %s: lm-eval on %s", stage.name, ", ".join(general.lm_eval.tasks))
            model = ctx.models.load_after(stage, before)
            out["lm_eval"] = run_lm_eval(model, ctx.models.tokenizer, general.lm_eval, ctx.cfg.seed,
                                         ctx.models.context_length)
        write_json(path, out)
    log.info("stage %s: general %s", stage.name, summary(out))
    return out


def summary(result: dict[str, Any]) -> dict[str, float]:
    """One flat line of numbers: `instructions.rougeL`, `<task>.<metric>` for each lm-eval task."""
    flat = {}
    if "instructions" in result:
        flat["instructions.rougeL"] = round(result["instructions"]["rougeL"], 2)
        if "judge" in result["instructions"]:
            flat["instructions.judge"] = round(result["instructions"]["judge"], 4)
    for task, metrics in result.get("lm_eval", {}).get("tasks", {}).items():
        for metric, value in metrics.items():
            if not metric.endswith("_stderr"):
                flat[f"{task}.{metric}"] = round(value, 4)
    return flat


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))
