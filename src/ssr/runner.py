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

import copy
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import yaml

from ssr import config as config_mod
from ssr.config import RunConfig
from ssr.data import Task, load_task
from ssr.distributed import Dist
from ssr.distributed import current as current_dist
from ssr.errors import ConfigError, RunDirError
from ssr.evaluation import greedy_outputs, learnt_retention, score_predictions, score_rows
from ssr.engines import resolve_backend, resolve_vllm_adapters
from ssr.engines.vllm import VLLMEngine, current_engine
from ssr.general import evaluate_general, general_stages
from ssr.generation import Completion, Generator, HFGenerator, SamplingParams
from ssr.io import read_jsonl, write_json, write_jsonl, write_text
from ssr.methods import Method, Stage, get_method
from ssr.models.lora import attach_adapter, is_adapter_weight, load_adapter, merges_between_stages, save_adapter, uses_lora
from ssr.models.dtype import DTYPES, machine_description, resolve_autocast, resolve_dtype
from ssr.models.loading import cache_root, check_model_source, context_length, load_base_model, load_tokenizer, local_model_dir
from ssr.models.templates import get_template
from ssr.runlock import run_lock
from ssr.training import train_stage

log = logging.getLogger("ssr")

BASE_STAGE = Stage(0, "0-base", (), fresh=True)
SHARED_FIRST_STAGE = ("sequential", "replay", "ssr", "l2", "ewc")
"""Methods whose stage 1 is plain fine-tuning on task 1 (a regulariser starts at stage 2)."""
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}$")  # tempfile's names for `.{name}.` + 8 random characters


@dataclass
class RunContext:
    """What a method may use during a run: config, tasks, run directory, the models, the plan."""

    cfg: RunConfig
    run_dir: Path
    tasks: list[Task]
    models: ModelState = field(repr=False)
    plan: list[Stage] = field(default_factory=list)
    dist: Dist | None = field(default=None, repr=False)
    """This process's place in a multi-process launch (None: a lone process, e.g. `ssr synth`)."""

    def stage_dir(self, stage: Stage) -> Path:
        return self.run_dir / "stages" / stage.name

    @property
    def is_main(self) -> bool:
        """Whether this process owns the run directory (always, with one process)."""
        return self.dist is None or self.dist.is_main

    def generator_after(self, stage: Stage, batch_size: int | None = None) -> Generator:
        """A generator for the model as it was right after `stage` (BASE_STAGE: θ(0)).

        Under several processes every process calls it (and `generate`) together: hf splits
        the prompts across them and gathers the answers; vLLM generates on the main process's
        engine alone (one engine, not one per process) and hands the answers to the others."""
        before = self.plan[: self.plan.index(stage)] if stage in self.plan else []
        if self.dist is None or self.dist.world == 1:
            return self.models.stage_generator(stage, before, batch_size)
        if self.models._vllm_serves(stage, before):
            local = self.models.stage_generator(stage, before, batch_size) if self.dist.is_main else None
            return SplitGenerator(self.dist, local, split=False)
        return SplitGenerator(self.dist, self.models.stage_generator(stage, before, batch_size), split=True)

    def write(self, fn: Callable, *args) -> None:
        """A write into the run directory: the main process does it, every process then goes on
        seeing it (a barrier), so all take the same branches afterwards."""
        if self.dist is None:
            fn(*args)
        else:
            self.dist.on_main(fn, *args)

    @contextmanager
    def timed(self, step: str):
        """Record the wall time of a completed step, and the machine it ran on, in timings.jsonl
        (summed over reruns, which may run elsewhere; main process)."""
        started = time.perf_counter()
        yield
        if self.is_main:
            line = json.dumps({"step": step, "seconds": round(time.perf_counter() - started, 2), "machine": machine_description()})
            with open(self.run_dir / "timings.jsonl", "a", encoding="utf-8") as f:
                f.write(line + "\n")


class SplitGenerator:
    """Greedy generation shared by every process of a launch; all of them call `generate` with the
    same prompts and all get every answer, in order.

    `split`: each process answers every N-th prompt of the length-sorted list (so long prompts
    are spread out) and the answers are gathered. Greedy answers do not depend on which batch a
    prompt is in, beyond floating-point noise from padding. Sampled generation is refused: the
    hf sampler draws from one random stream per call, so splitting would change the samples
    (SSR synthesis runs on the main process instead). Not `split`: the main process's generator
    answers everything (the vLLM engine) and the others receive the answers.
    """

    def __init__(self, dist: Dist, local: Generator | None, split: bool):
        self.dist, self.local, self.split = dist, local, split

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        if not self.split:
            out = self.local.generate(prompts, params, desc) if self.dist.is_main else None
            return [[Completion(t, r) for t, r in row] for row in self.dist.broadcast(_plain(out) if out is not None else None)]
        if params.do_sample:
            raise ValueError("sampled generation is not split across processes (its draws would change); run it on one")
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        mine = order[self.dist.rank :: self.dist.world]
        answers = self.local.generate([prompts[i] for i in mine], params, desc) if mine else []
        results: list[list[Completion] | None] = [None] * len(prompts)
        for i, row in self.dist.all_gather(list(zip(mine, _plain(answers)))):
            results[i] = [Completion(t, r) for t, r in row]
        return results


def _plain(rows: list[list[Completion]]) -> list[list[tuple[str, str]]]:
    """Completions as (text, finish_reason) pairs, for sending to other processes."""
    return [[(str(c), c.finish_reason) for c in row] for row in rows]


class ModelState:
    """The one owner of "which weights are loaded where": the training model (base + the adapter
    being trained, on the training device), the generation engine, and which stage each holds.
    Everything is loaded lazily: a finished run loads nothing.

    With `train.adapter: continue` one PEFT adapter lives on the base model across stages;
    the base model θ(0) stays available through `disable_adapter()`. With `new` (and always
    for OSF), each finished adapter is merged into the weights before a fresh one is attached.

    Generation (`stage_generator`) runs on the configured backend. With `vllm`, one engine per
    process serves θ(0) and every stage: its adapter per request (`lora`), or its weights merged
    here and reloaded by the engine (`merged`); the training model is not needed (on a GPU it
    leaves the device while the engine generates, and the engine sleeps while a stage trains).
    Under `lora`, stages whose weights are a chain of merged adapters (`train.adapter: new`) or
    OSF's, and a separate `method.icl_model` always, are served by the `hf` backend.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, device: torch.device | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.device = device
        """This process's device (accelerate's: each process of a multi-GPU launch its own GPU);
        None: `cuda` where there is one, else the CPU."""
        self.model = None  # the base model, or a PeftModel over it
        self.at_stage: str | None = None  # which stage's weights `model` holds
        self.base_modified = False  # True once an adapter was merged into the weights
        self.adapter_overrides: dict[str, Path | None] = {}  # see serve_as

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.model.name, self.cfg.model.cache_dir, self.cfg.model.trust_remote_code)

    @cached_property
    def template(self):
        return get_template(self.cfg.model.template, self.tokenizer)

    @cached_property
    def hf_dtype_name(self) -> str:
        """`model.dtype` resolved once for the hf model (training, and hf generation)."""
        return resolve_dtype(self.cfg.model.dtype, cache_root(self.cfg.model.cache_dir), engine="hf")

    @cached_property
    def vllm_dtype_name(self) -> str:
        """`model.dtype` resolved once for the vLLM engine (may measure the CPU, once per machine)."""
        return resolve_dtype(self.cfg.model.dtype, cache_root(self.cfg.model.cache_dir), engine="vllm")

    @cached_property
    def vllm_adapters(self) -> str:
        """`generation.vllm_adapters` resolved: `lora` or `merged`."""
        return resolve_vllm_adapters(self.cfg.generation.vllm_adapters)

    @cached_property
    def train_bf16(self) -> bool:
        """`train.bf16` resolved once per run (bf16 autocast in training; may measure the CPU once)."""
        return resolve_autocast(self.cfg.train.bf16, cache_root(self.cfg.model.cache_dir))

    @cached_property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.hf_dtype_name]

    @cached_property
    def context_length(self) -> int:
        return context_length(self.cfg.model.name, self.cfg.model.cache_dir, self.cfg.model.trust_remote_code)

    def _load_base(self, name: str | None = None):
        """A base model with the config's dtype and safety settings (trust_remote_code, allow_pickle)."""
        m = self.cfg.model
        return load_base_model(name or m.name, m.cache_dir, dtype=self.dtype, trust_remote_code=m.trust_remote_code,
                               allow_pickle=m.allow_pickle, device=self.device)

    def _base(self):
        if self.model is None:
            self.model = self._load_base()
        elif hasattr(self.model, "peft_config"):
            self.model = self.model.unload()  # drop LoRA layers, keep base weights
        if self.base_modified:
            self.model = self._load_base()
            self.base_modified = False
        self.at_stage = BASE_STAGE.name
        return self._on_device(self.model)

    def base(self):
        """The model before any training (row 0 of the matrix)."""
        return self._base() if self.at_stage != BASE_STAGE.name else self._on_device(self.model)

    def start_stage(self, stage: Stage, previous: list[Stage]):
        """The trainable model a stage starts from: fresh LoRA, or the previous stage's adapter."""
        engine = current_engine()
        if engine is not None:
            engine.sleep()  # on a GPU: the engine's memory goes back while the stage trains
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

    def serve_as(self, stage: Stage, adapter: Path | None) -> None:
        """Treat `stage`'s model as θ(0) + `adapter` (None: θ(0) itself), e.g. `ssr synth --adapter`."""
        self.adapter_overrides[stage.name] = adapter

    def adapter_dir(self, stage: Stage) -> Path | None:
        """Where `stage`'s adapter lives (None for θ(0))."""
        if stage.name == BASE_STAGE.name:
            return None
        return self.adapter_overrides.get(stage.name, self.run_dir / "stages" / stage.name / "adapter")

    def adapter_parameters(self) -> dict:
        """The adapter weights of the loaded model by name: what a stage trains, what L2 / EWC anchor."""
        return {name: p for name, p in self.model.named_parameters() if is_adapter_weight(name)}

    def load_after(self, stage: Stage, before: list[Stage], trainable: bool = False):
        """The model as it was right after `stage` (loading adapters from disk if needed)."""
        if self.adapter_dir(stage) is None:
            return self.base()
        if self.at_stage == stage.name:
            return self._on_device(self.model)
        chain = self._adapter_chain(stage, before)
        model = self._base()
        for i, s in enumerate(chain):
            model = self.load_adapter(model, self.adapter_dir(s), trainable=trainable and i == len(chain) - 1)
            if i < len(chain) - 1:
                model = model.merge_and_unload()
                self.base_modified = True
        self.model, self.at_stage = model, stage.name
        return model

    def _adapter_chain(self, stage: Stage, before: list[Stage]) -> list[Stage]:
        """The stages whose adapters make up `stage`'s weights, in order (earlier ones merged)."""
        return [*before, stage] if merges_between_stages(self.cfg) and not stage.fresh else [stage]

    def save_merged(self, stage: Stage, before: list[Stage], directory: Path) -> None:
        """Write `stage`'s weights, adapters merged, as a model directory in the vLLM engine's dtype
        (a copy is merged: the loaded model keeps its adapter for training and evaluation)."""
        self.load_after(stage, before)
        self._off_device()  # the copy is made in host memory
        model = copy.deepcopy(self.model)
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.to(device="cpu", dtype=DTYPES[self.vllm_dtype_name]).save_pretrained(directory)

    def merged_weights(self, stage: Stage, before: list[Stage]):
        """`stage`'s weights as a merged vLLM engine takes them (None: θ(0)). They are named by
        their adapter directories and files' times: a stage's adapter is written once."""
        from ssr.engines.vllm import Weights

        if self.adapter_dir(stage) is None:
            return None
        key = tuple((str(d.resolve()), max((f.stat().st_mtime_ns for f in d.iterdir()), default=0))
                    for d in (self.adapter_dir(s) for s in self._adapter_chain(stage, before)))
        return Weights(key, lambda directory: self.save_merged(stage, before, directory))

    def finished(self, stage: Stage) -> None:
        self.at_stage = stage.name

    def generator(self, model=None, batch_size: int | None = None, tokenizer=None) -> HFGenerator:
        """An `hf` generator over `model` (default: the loaded model)."""
        return HFGenerator(model or self.model, tokenizer or self.tokenizer, batch_size or self.cfg.eval.batch_size)

    # --- generation on the configured backend ---

    def _vllm_serves(self, stage: Stage, before: list[Stage]) -> bool:
        """vLLM serves θ(0) and, merged, every stage; with adapters per request (`lora`), any stage
        whose weights are θ(0) + one LoRA adapter directory (not a chain of merged adapters, not
        OSF's adapters, which vLLM cannot load)."""
        if self.cfg.generation.backend != "vllm":
            return False
        if self.adapter_dir(stage) is None or self.vllm_adapters == "merged":
            return True
        return uses_lora(self.cfg) and (stage.fresh or not merges_between_stages(self.cfg) or not before)

    def engine(self) -> VLLMEngine:
        from ssr.engines.vllm import EngineSpec, get_engine, lora_rank_for

        g = self.cfg.generation
        spec = EngineSpec(
            model_path=local_model_dir(self.cfg.model.name, self.cfg.model.cache_dir).path,
            dtype=self.vllm_dtype_name,
            max_lora_rank=lora_rank_for(self.cfg.train.lora.r),
            kv_cache_gb=g.kv_cache_gb, gpu_memory_utilization=g.gpu_memory_utilization,
            trust_remote_code=self.cfg.model.trust_remote_code, allow_pickle=self.cfg.model.allow_pickle,
            adapters=self.vllm_adapters,
        )
        return get_engine(spec)

    def stage_generator(self, stage: Stage, before: list[Stage], batch_size: int | None = None) -> Generator:
        """A generator for the model right after `stage` (BASE_STAGE = θ(0)), on the backend."""
        if self._vllm_serves(stage, before):
            from ssr.engines.vllm import VLLMGenerator

            self._off_device()
            engine = self.engine()
            if engine.spec.adapters == "merged":
                return VLLMGenerator(engine, weights=self.merged_weights(stage, before))
            return VLLMGenerator(engine, self.adapter_dir(stage))
        return self.generator(self.load_after(stage, before), batch_size)

    @contextmanager
    def icl_generator(self, batch_size: int | None = None):
        """(generator, tokenizer, context length) of the model that writes synthetic instances:
        the base model θ(0), never a fine-tuned one (or `method.icl_model` when set)."""
        name = self.cfg.method.icl_model
        if name is not None:  # another model: loaded on its own, for this synthesis only
            model = self._load_base(name)
            tokenizer = load_tokenizer(name, self.cfg.model.cache_dir, self.cfg.model.trust_remote_code)
            yield self.generator(model, batch_size, tokenizer), tokenizer, context_length(name, self.cfg.model.cache_dir, self.cfg.model.trust_remote_code)
            return
        if self._vllm_serves(BASE_STAGE, []):
            yield self.stage_generator(BASE_STAGE, [], batch_size), self.tokenizer, self.context_length
            return
        if hasattr(self.model, "disable_adapter") and not self.base_modified:
            with self.model.disable_adapter():  # θ(0) without unloading the adapter
                yield self.generator(self._on_device(self.model), batch_size), self.tokenizer, self.context_length
            return
        yield self.generator(self.base(), batch_size), self.tokenizer, self.context_length

    def _gpu(self) -> torch.device | None:
        """The accelerator this process trains on, or None on a CPU."""
        device = self.device if self.device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return device if device.type != "cpu" else None

    def _on_device(self, model):
        """The training model on this process's accelerator (it may have left it while vLLM generated)."""
        gpu = self._gpu()
        if model is not None and gpu is not None and next(model.parameters()).device.type == "cpu":
            model.to(gpu)
        return model

    def _off_device(self) -> None:
        """On a GPU, move the training model to host memory while the vLLM engine generates,
        so the device never holds two copies of the weights."""
        if self.model is not None and self._gpu() is not None and next(self.model.parameters()).device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def load_adapter(self, model, path: Path, trainable: bool):
        return load_adapter(model, path, trainable=trainable, allow_pickle=self.cfg.model.allow_pickle)


class RunDir:
    """The output directory: holds one run; refuses a different config, and a second writer.

    `check` runs before anything is loaded (is the path usable at all), `claim` only after the
    config, data and plan passed: a run refused by validation leaves no trace, and a directory
    whose run stopped before finishing any step may be claimed by a different config.
    """

    STEP_DIRS = ("stages", "synthetic", "rehearsal")

    def __init__(self, path: str | Path):
        if not str(path).strip():
            raise RunDirError("--output-dir is empty; give the run directory")
        self.path = Path(path)

    def check(self) -> None:
        """Refuse a path that cannot hold a run: a file, a path under a file, a corrupt run."""
        for parent in [self.path, *self.path.parents]:
            if parent.exists() and not parent.is_dir():
                where = "is a file" if parent == self.path else f"lies under the file {parent}"
                raise RunDirError(f"--output-dir {self.path}: {where}; a run directory is needed")
            if parent.exists():
                break
        self._saved_config()

    def has_progress(self) -> bool:
        """Whether any step of a run finished here (its results would be reused)."""
        return (self.path / "results.json").exists() or any(
            p.is_file() for d in self.STEP_DIRS if (self.path / d).is_dir() for p in (self.path / d).rglob("*"))

    def _saved_config(self) -> dict | None:
        saved = self.path / "config.yaml"
        if not saved.exists():
            return None
        try:
            previous = yaml.safe_load(saved.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            previous = err
        if isinstance(previous, dict):
            return previous
        if self.has_progress():
            raise RunDirError(f"{saved}: not a readable run config, yet the directory holds finished steps; "
                              "restore the file or use another --output-dir")
        return None  # a run that finished nothing: its config is simply replaced

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"--output-dir {self.path}: cannot be created ({err.strerror or err})") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunDirError(f"--output-dir {self.path}: not writable")

    def claim(self, cfg: RunConfig) -> None:
        """Write the run's config, or check it is the one already there (the caller holds the lock)."""
        self.check()
        self.create()
        saved = self.path / "config.yaml"
        current = config_mod.to_dict(cfg)
        previous = self._saved_config()
        if previous is not None:
            previous = config_mod.with_legacy_defaults(previous)
            changes = config_mod.diff(previous, current)
            if changes and self.has_progress():
                raise RunDirError(
                    f"{self.path} holds a run with a different config; use another --output-dir "
                    f"or delete it. Differences (saved -> now): " + "; ".join(changes)
                )
            if changes:
                log.info("%s: replacing the config of a run that finished no step", self.path)
        self._remove_temporaries()
        write_text(saved, config_mod.to_yaml(cfg))

    def _remove_temporaries(self) -> None:
        """Delete what an atomic write killed half-way left (`ssr.io.atomic_path` temporaries):
        never read, but clutter. Safe: the caller holds the directory's lock."""
        for path in sorted(self.path.rglob(".*"), reverse=True):
            if TEMPORARY.match(path.name):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def prepare(cfg: RunConfig) -> tuple[list[Task], Method]:
    """Every check that needs no model, in one place (`ssr run` and `ssr validate` alike): the
    model source, every data file, and the method's plan. Returns the loaded tasks and method."""
    check_model_source(cfg)
    tasks = [load_task(t, cfg.data, cfg.method.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.seed) for t in cfg.tasks]
    method: Method = get_method(cfg.method.name)(cfg, tasks)
    problems = method.check()
    if problems:
        raise ConfigError("\n".join(problems))
    return tasks, method


def setup_logging(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def evaluate_stage(ctx: RunContext, stage: Stage, tasks: list[str]) -> dict[str, float]:
    """Predictions of the stage's model on `tasks`; cached per task file. Returns ROUGE-L x 100.

    Under several processes each answers a share of the rows; the main process scores the
    gathered answers and writes them (every row once)."""
    scores = {}
    pred_dir = ctx.stage_dir(stage) / "predictions"
    cfg = ctx.cfg
    for name in tasks:
        path = pred_dir / f"{name}.jsonl"
        fresh = not path.exists()
        if fresh:
            task = next(t for t in ctx.tasks if t.name == name)
            if ctx.is_main:
                log.info("stage %s, task %s: evaluating", stage.name, name)
            with ctx.timed(f"eval {stage.name} {name}"):
                answers = greedy_outputs(ctx.generator_after(stage), ctx.models.template,
                                         [(i.definition, i.input) for i in task.eval], cfg.train.max_source_length,
                                         task.max_new_tokens, desc=f"eval {task.name}")
                ctx.write(lambda: write_jsonl(path, score_rows(task.eval, answers, cfg.eval.scorer, task.language)))
        scores[name] = score_predictions(read_jsonl(path))["rougeL"]
        if fresh and ctx.is_main:
            log.info("stage %s, task %s: ROUGE-L %.2f", stage.name, name, scores[name])
    return scores


def resolve_settings(cfg: RunConfig) -> RunConfig:
    """`cfg` with the generation backend made concrete, so that the run directory records which
    engine generated and a rerun on a machine that would choose otherwise is refused instead of
    mixing the two. (`model.dtype: auto` stays as written: it is resolved per engine, logged,
    and recorded in results.json.)"""
    cfg = cfg.model_copy(deep=True)
    cfg.generation.backend = resolve_backend(cfg.generation.backend)
    if cfg.generation.backend == "vllm":
        cfg.generation.vllm_adapters = resolve_vllm_adapters(cfg.generation.vllm_adapters)
    return cfg


def run(cfg: RunConfig, output_dir: str | Path, reuse_from: Path | None = None,
        on_reuse: Callable[[bool], None] | None = None) -> dict:
    """Run (or resume) a whole continual-learning sequence; returns the results dict.

    Validation comes first (nothing is written if it fails); then the directory is locked
    (one writer) and claimed. `reuse_from`: a finished run whose base evaluation and stage 1
    are copied in when they are the same computation (`share_first_stage`); `on_reuse` is
    told whether they were.

    Under `accelerate launch` every process calls this: each validates (read-only), the main
    process alone locks, claims and writes the directory (see ssr.distributed), and all of
    them return the results.
    """
    run_dir = RunDir(output_dir)
    run_dir.check()
    cfg = resolve_settings(cfg)
    tasks, method = prepare(cfg)
    dist = current_dist()
    check_launch(cfg, dist)
    with ExitStack() as stack:
        def own() -> bool | None:
            run_dir.create()
            stack.enter_context(run_lock(run_dir.path))
            run_dir.claim(cfg)
            prepare_caches(cfg)  # once, before the other processes read them
            return share_first_stage(Path(reuse_from), cfg, run_dir.path) if reuse_from is not None else None

        shared = dist.decide(own)  # a refusal on the main process (in use, another config) stops every process
        if reuse_from is not None and on_reuse is not None and dist.is_main:
            on_reuse(bool(shared))
        handler = setup_logging(run_dir.path) if dist.is_main else None
        try:
            return _run(cfg, run_dir.path, tasks, method, dist)
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()


def prepare_caches(cfg: RunConfig) -> None:
    """What the first load writes into the model cache (a GGUF's conversion, the CPU's bf16
    measurement): done by one process before the others load."""
    for name in (cfg.model.name, cfg.method.icl_model):
        if name is not None:
            local_model_dir(name, cfg.model.cache_dir)
    resolve_dtype(cfg.model.dtype, cache_root(cfg.model.cache_dir), engine=cfg.generation.backend)


def check_launch(cfg: RunConfig, dist: Dist) -> None:
    """Refuse what a multi-process launch cannot do, before anything is written."""
    plugin = getattr(dist.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3 and cfg.generation.backend != "vllm":
        raise ConfigError(f"{cfg.where('generation', 'backend')}: field 'generation.backend': DeepSpeed ZeRO-3 shards the "
                          "training model's weights across processes, so it cannot generate by itself: use "
                          "generation.backend: vllm (the engine loads the weights and each stage's adapter from disk), "
                          "or ZeRO-2 (see README, Scaling)")
    if plugin is not None and plugin.zero_stage == 3 and resolve_vllm_adapters(cfg.generation.vllm_adapters) == "merged":
        raise ConfigError(f"{cfg.where('generation', 'vllm_adapters')}: field 'generation.vllm_adapters': under DeepSpeed "
                          "ZeRO-3 no process holds a stage's whole weights to merge: use vllm_adapters: lora")


def _run(cfg: RunConfig, run_dir: Path, tasks: list[Task], method: Method, dist: Dist | None = None) -> dict:
    plan = method.plan()
    ctx = RunContext(cfg, run_dir, tasks, ModelState(cfg, run_dir, dist.device if dist else None), plan, dist)
    if ctx.is_main:
        log.info("run %s: method %s, tasks %s, %d process(es)", run_dir, method.name, [t.name for t in tasks],
                 dist.world if dist else 1)

    all_names = [t.name for t in tasks]
    stage_scores = {0: evaluate_stage(ctx, BASE_STAGE, all_names)}
    general = {}
    measured = set(general_stages(cfg.eval.general, plan)) if cfg.eval.general is not None else set()
    if cfg.eval.general is not None:
        general[BASE_STAGE.name] = evaluate_general(ctx, BASE_STAGE, [])
    stage0 = method.learnt_stage()  # learnt tasks: their rehearsal sets come from the base model
    if stage0 is not None and method.pending_after(stage0, ctx):
        with ctx.timed(f"after {stage0.name}"):
            method.after_stage(stage0, ctx)
    stage_stats = {}
    for k, stage in enumerate(plan):
        sdir = ctx.stage_dir(stage)
        adapter_dir = sdir / "adapter"
        reg = method.regularizer
        if not adapter_dir.exists():
            model = ctx.models.start_stage(stage, plan[:k])
            rows = method.training_rows(stage, ctx)
            ctx.write(write_jsonl, sdir / "train.jsonl", rows)
            if ctx.is_main:
                log.info("stage %s: training on %d rows (%s)", stage.name, len(rows), _sources(rows))
            penalty = reg.penalty(ctx, plan[k - 1], ctx.models.adapter_parameters()) if reg and k > 0 else None
            with ctx.timed(f"train {stage.name}"):
                stats = train_stage(model, ctx.models.template, rows, cfg.train, cfg.seed + stage.index,
                                    desc=f"train {stage.name}", penalty=penalty, bf16=ctx.models.train_bf16)

                def save() -> None:
                    write_json(sdir / "train_stats.json", stats)  # before the adapter, which marks the stage done
                    save_adapter(model, adapter_dir)

                with gathered_adapter(model):  # ZeRO-3: every process hands in its shards of the adapter
                    ctx.write(save)
            ctx.models.finished(stage)
            if ctx.is_main:
                log.info("stage %s: %s", stage.name, stats)

        if reg and reg.pending_after(stage, ctx, last=k == len(plan) - 1):
            def regularizer_state(stage=stage, k=k) -> None:  # p_prev (and Fisher) for the next stage
                model = ctx.models.load_after(stage, plan[:k])
                reg.after_stage(stage, ctx, model, ctx.models.adapter_parameters(), plan[k - 1] if k > 0 else None)

            with ctx.timed(f"regularizer {stage.name}"):
                ctx.write(regularizer_state)

        stage_scores[stage.index] = evaluate_stage(ctx, stage, list(stage.evaluate))
        if stage.name in measured:
            general[stage.name] = evaluate_general(ctx, stage, plan[:k])
        if method.pending_after(stage, ctx):
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
        "learnt": learnt_retention(scores, all_names, len(method.learnt)),
        "general": general,
        "exact_match": _exact_match_matrix(ctx, method, plan),
        "train_stats": stage_stats,
        "wall_seconds": wall_seconds(run_dir),
        "engines": {  # what generated and what trained, as resolved on this machine
            "generation": cfg.generation.backend,
            "generation_dtype": ctx.models.vllm_dtype_name if cfg.generation.backend == "vllm" else ctx.models.hf_dtype_name,
            "training_dtype": ctx.models.hf_dtype_name,
            "training_autocast": "bfloat16" if ctx.models.train_bf16 else "off",
        },
        "processes": dist.world if dist else 1,
    }
    ctx.write(write_json, run_dir / "results.json", results)
    if ctx.is_main:
        log.info("results: AR %s FWT %s BWT %s", results["AR"], results["FWT"], results["BWT"])
    return results


def gathered_adapter(model):
    """Under DeepSpeed ZeRO-3 the adapter's weights are sharded: gather them on every process
    (a collective) so that the main process can save them; elsewhere nothing to do."""
    from ssr.models.loading import _zero3

    if not _zero3():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(
        [p for name, p in model.named_parameters() if is_adapter_weight(name)], modifier_rank=None)


def _exact_match_matrix(ctx: RunContext, method: Method, plan: list[Stage]) -> dict[str, dict[str, float]]:
    out = {}
    for stage in [BASE_STAGE, *plan]:
        pred_dir = ctx.stage_dir(stage) / "predictions"
        out[stage.name] = {p.stem: score_predictions(read_jsonl(p))["exact_match"] for p in sorted(pred_dir.glob("*.jsonl"))}
    return out


def share_first_stage(source: Path, cfg: RunConfig, target: Path) -> bool:
    """Copy the base evaluation and stage 1 of a finished run into a new run of another method.

    Stage 1 is plain fine-tuning on task 1 for every continual method (sequential, replay,
    ssr, l2, ewc: SHARED_FIRST_STAGE): with the same config apart from `method.*`, it is the same
    computation (same rows, seeds and data order; a test checks the adapters are identical), so it is reused, not
    redone. The copied steps' timings come along, so wall times stay comparable.
    Returns whether anything was copied.
    """
    if (target / "stages").exists() or not first_stage_shareable(source, cfg):
        return False
    first = f"1-{cfg.tasks[0].name}"
    for name in (BASE_STAGE.name, first):
        shutil.copytree(source / "stages" / name, target / "stages" / name)
    timings = source / "timings.jsonl"
    if timings.exists():
        steps = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
        # `eval <stage> <task>` and `train <stage>`, matched whole: a task name may hold spaces
        copied = [{**s, "shared_from": str(source)} for s in steps
                  if s["step"] == f"train {first}" or s["step"].startswith((f"eval {BASE_STAGE.name} ", f"eval {first} "))]
        (target / "timings.jsonl").write_text("".join(json.dumps(s) + "\n" for s in copied))
    log.info("reused %s and %s from %s", BASE_STAGE.name, first, source)
    return True


def first_stage_shareable(source: Path, cfg: RunConfig) -> bool:
    """Whether `source` (a run directory) holds a finished stage 1 that a run of `cfg` would
    compute identically: both methods in SHARED_FIRST_STAGE, configs equal apart from `method.*`,
    and no learnt task (replay / ssr rehearse those already in stage 1)."""
    saved = source / "config.yaml"
    if not saved.exists() or cfg.method.name not in SHARED_FIRST_STAGE or any(t.learnt for t in cfg.tasks):
        return False
    try:
        previous = config_mod.with_legacy_defaults(yaml.safe_load(saved.read_text(encoding="utf-8")))
        if previous["method"]["name"] not in SHARED_FIRST_STAGE:
            return False
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return False
    if any(not line.startswith("method.") for line in config_mod.diff(previous, config_mod.to_dict(resolve_settings(cfg)))):
        return False
    return (source / "stages" / f"1-{cfg.tasks[0].name}" / "adapter").exists()


def wall_seconds(run_dir: Path, own_only: bool = False) -> float:
    """Seconds spent on the run's steps, summed over reruns; `own_only` leaves out the steps
    copied from another run by `share_first_stage` (to total a sweep without counting them twice)."""
    return round(sum(s["seconds"] for s in _timed_steps(run_dir, own_only)), 1)


def wall_seconds_by_machine(run_dir: Path, own_only: bool = False) -> dict[str | None, float]:
    """`wall_seconds` split by the machine each step ran on (None: a step timed before timings
    named their machine), so that wall times of different machines are never averaged together."""
    seconds: dict[str | None, float] = {}
    for s in _timed_steps(run_dir, own_only):
        seconds[s.get("machine")] = seconds.get(s.get("machine"), 0.0) + s["seconds"]
    return {machine: round(total, 1) for machine, total in seconds.items()}


def _timed_steps(run_dir: Path, own_only: bool) -> list[dict]:
    path = run_dir / "timings.jsonl"
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [s for s in steps if not (own_only and "shared_from" in s)]


def _sources(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        key = f"{r['task']}/{r['source']}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


__all__ = ["run", "prepare", "resolve_settings", "RunContext", "ModelState", "RunDir", "evaluate_stage", "share_first_stage", "first_stage_shareable", "wall_seconds",
           "wall_seconds_by_machine"]
