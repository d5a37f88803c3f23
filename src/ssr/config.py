"""The run configuration: one YAML file, validated once here; plain pydantic objects inside.

Every field is documented in the README's configuration reference. `--set a.b=value`
overrides any key before validation (the value is parsed as YAML: `--set train.lr=1e-3`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssr.errors import ConfigError

METHODS = ("sequential", "replay", "mtl", "single", "ssr", "l2", "ewc", "osf")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = "smollm2-135m"
    """Alias (`smollm2-135m`), Hugging Face id, local directory, or a `.gguf` file."""
    template: Literal["auto", "raw", "chat", "alpaca", "llama2"] = "auto"
    cache_dir: str | None = None
    """Where GGUF models are converted to safetensors once (default: $SSR_CACHE or ~/.cache/ssr)."""


class TaskConfig(_Strict):
    name: str = Field(min_length=1)
    builtin: bool = False
    """Use the built-in task `name` (sentiment, product, city); no files needed."""
    train: str | None = None
    eval: str | None = None
    demos: str | None = None
    format: Literal["auto", "superni", "natural-instructions", "jsonl"] = "auto"
    definition: str | None = None
    """Overrides the definition found in the data (required for plain JSONL without `instruction`)."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Answer length for this task (evaluation and SSR refinement); default `eval.max_new_tokens`."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if "/" in v or v.startswith("."):
            raise ValueError("a task name is used as a file name: no '/' and no leading '.'")
        return v

    @model_validator(mode="after")
    def _builtin(self) -> TaskConfig:
        if self.builtin:
            from ssr.data.builtin import builtin_task_names

            if self.name not in builtin_task_names():
                raise ValueError(f"no built-in task {self.name!r}; built-in tasks: {builtin_task_names()}")
            if self.train or self.eval or self.demos:
                raise ValueError("a built-in task takes no train/eval/demos files")
        return self


class DataConfig(_Strict):
    dir: str | None = None
    """Base directory for relative task paths (default: the config file's directory)."""
    max_train_examples: int | None = Field(default=None, ge=1)
    """Keep the first N training rows of each task (the paper's split is already ordered)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (and report how many) instead of failing on the first one."""


class EvalConfig(_Strict):
    max_examples: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    schedule: Literal["all", "metrics"] = "all"
    """`all`: every task after every stage (the full matrix, as in the paper). `metrics`: only
    the cells AR, FWT and BWT use (task i after stages i-1 and i, every task after the last)."""


class LoraSettings(_Strict):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class TrainConfig(_Strict):
    epochs: float = Field(default=3, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=8, ge=1)
    """Micro-batch per device; the global batch is batch_size x grad_accum x devices."""
    grad_accum: int = Field(default=4, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_source_length: int = Field(default=1024, ge=8)
    max_target_length: int = Field(default=512, ge=2)
    bf16: Literal["on", "off", "auto"] = "auto"
    """bf16 autocast; `auto` = on where the accelerator supports bf16, off on CPU."""
    group_by_length: bool = True
    """Batch rows of similar length together (less padding); order inside is still shuffled."""
    adapter: Literal["continue", "new"] = "continue"
    """`continue`: one LoRA adapter across stages (the paper). `new`: merge the adapter
    learnt so far into the weights and start a fresh one each stage."""
    lora: LoraSettings = Field(default_factory=LoraSettings)

    @field_validator("bf16", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        # YAML 1.1 reads on/off as booleans.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class MethodConfig(_Strict):
    name: Literal["sequential", "replay", "mtl", "single", "ssr", "l2", "ewc", "osf"] = "sequential"
    selection: Literal["random", "kmeans"] | None = None
    """How rehearsal instances are chosen (default: random for replay, kmeans for ssr)."""
    ratio: float | None = Field(default=None, gt=0, le=1)
    """Rehearsal size as a fraction of each task's training size (default 0.1)."""
    per_task: int | None = Field(default=None, ge=1)
    """Rehearsal size as a fixed count per task (instead of `ratio`)."""
    n_clusters: int = Field(default=20, ge=1)
    embedding_model: str = "all-MiniLM-L6-v2"
    """sentence-transformers model: the packaged all-MiniLM-L6-v2, any model id or a path."""

    # --- SSR (ignored by the other methods) ---
    n_demos: int = Field(default=20, ge=2)
    """Size of the demonstration pool when a task gives no `demos` file (last N train rows)."""
    n_shots: int = Field(default=2, ge=1)
    max_prompts: int | None = Field(default=None, ge=1)
    samples_per_prompt: int = Field(default=3, ge=1)
    temperature: float = Field(default=0.9, gt=0)
    top_p: float = Field(default=0.6, gt=0, le=1)
    repetition_penalty: float = Field(default=1.2, gt=0)
    synth_max_new_tokens: int = Field(default=256, ge=8)
    ignore_eos: bool = False
    """Keep sampling past the end-of-sequence token during synthesis (small chat models
    tend to end their turn after writing an input)."""
    keep_input_only: bool = True
    """Keep candidates with an input but no `Output:` when refining (their output is rewritten)."""
    max_input_tokens: int = Field(default=800, ge=1)
    max_output_tokens: int = Field(default=128, ge=1)
    max_definition_input_tokens: int = Field(default=500, ge=1)
    refine: bool = True
    """False = the paper's "w/o refinement" ablation: rehearse the base model's outputs."""
    kmeans_fit: Literal["synthetic", "demos"] = "synthetic"
    """`demos` = supervised K-means: centroids from the real demonstrations."""
    demo_outputs: bool = True
    """False = input-only demonstrations in the ICL prompt (ablation)."""
    demos_override: dict[str, str] | None = None
    """Task name -> file of other demonstrations (the paper's "new demos" ablation)."""
    icl_model: str | None = None
    """Model that writes the synthetic inputs (default: the base model)."""
    batch_size: int = Field(default=48, ge=1)
    """Sequences per generation batch in synthesis and refinement (each sample is a sequence)."""

    # --- regularisers (sequential, replay, ssr; `l2` / `ewc` are sequential + that regulariser) ---
    regularizer: Literal["none", "l2", "ewc"] | None = None
    """Penalty added to the loss from stage 2 on (default: none; `l2` / `ewc` for those methods)."""
    reg_lambda: float = Field(default=0.1, ge=0)
    """λ of the penalty λ Σ w (p − p_prev)² over the trainable weights."""
    fisher_samples: int = Field(default=200, ge=1)
    """EWC: single-example batches of the stage's training rows that estimate the Fisher."""
    fisher_accumulate: bool = False
    """EWC: add each stage's Fisher to the previous one (the release keeps only the latest)."""

    # --- OSF (PEFT orthogonal subspace fine-tuning) ---
    osf_effective_rank: list[float] | None = None
    """Per stage, the fraction of each weight's singular directions kept frozen (PEFT's
    `effective_rank`); default evenly spaced from 0.3 to 0.7 over the stages."""

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        if self.name in ("l2", "ewc") and self.regularizer not in (None, self.name):
            raise ValueError(f"method {self.name} is sequential + the {self.name} regulariser; "
                             f"use method.name: sequential with method.regularizer: {self.regularizer} instead")
        if self.name in ("mtl", "single", "osf") and self.regularizer not in (None, "none"):
            raise ValueError(f"method.regularizer applies to sequential, replay and ssr, not {self.name} "
                             "(it anchors each stage to the previous stage's weights)")
        if self.osf_effective_rank is not None:
            if self.name != "osf":
                raise ValueError(f"osf_effective_rank only applies to osf, not {self.name}")
            if not all(0 < r < 1 for r in self.osf_effective_rank):
                raise ValueError("osf_effective_rank: every value is a fraction in (0, 1)")
        if self.ratio is not None and self.per_task is not None:
            raise ValueError("give either method.ratio or method.per_task, not both")
        rehearsal_keys = ("selection", "ratio", "per_task")
        if self.name not in ("replay", "ssr"):
            used = [k for k in rehearsal_keys if getattr(self, k) is not None]
            if used:
                raise ValueError(f"{', '.join(used)} only apply to replay and ssr, not {self.name}")
        return self

    @property
    def regularizer_or_default(self) -> str:
        """The regulariser in effect: `l2` / `ewc` for those methods, else `regularizer` or none."""
        return self.name if self.name in ("l2", "ewc") else (self.regularizer or "none")

    @property
    def selection_or_default(self) -> str:
        return self.selection or ("kmeans" if self.name == "ssr" else "random")


class RunConfig(_Strict):
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: list[TaskConfig] = Field(min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)

    @model_validator(mode="after")
    def _unique_tasks(self) -> RunConfig:
        names = [t.name for t in self.tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique, repeated: {sorted(dup)}")
        if self.method.regularizer_or_default != "none" and self.train.adapter == "new":
            raise ValueError("a regulariser anchors the adapter to its previous values: it needs train.adapter: continue")
        ranks = self.method.osf_effective_rank
        if ranks is not None and len(ranks) != len(self.tasks):
            raise ValueError(f"method.osf_effective_rank: one value per task ({len(self.tasks)}), got {len(ranks)}")
        return self


# Keys that change how fast a run goes, not what it computes: a rerun may change them.
RUNTIME_KEYS = ("eval.batch_size", "method.batch_size")


def _parse_value(text: str) -> Any:
    """YAML scalar/list parsing, plus the floats YAML 1.1 leaves as strings (`1e-3`)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with each `a.b.c=value` applied (value parsed as YAML)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        node: Any = raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: '{part}' is not an index of a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping")
            if last:
                node[part] = _parse_value(value)
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return raw


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
        lines.append(f"{source}: {loc}: {msg}{got}")
    return "\n".join(lines)


def validate(raw: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, raw: dict | None = None) -> RunConfig:
    """Load, override and validate a config; resolve relative data paths to absolute ones."""
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        base_dir = path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    raw = apply_overrides(raw, overrides or [])
    cfg = validate(raw, str(path or "config"))
    return resolve_paths(cfg, base_dir)


def resolve_paths(cfg: RunConfig, base_dir: Path) -> RunConfig:
    data_dir = Path(cfg.data.dir).expanduser() if cfg.data.dir else base_dir
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()
    cfg = cfg.model_copy(deep=True)
    cfg.data.dir = str(data_dir)
    for task in cfg.tasks:
        for split in ("train", "eval", "demos"):
            value = getattr(task, split)
            if value is not None and not Path(value).expanduser().is_absolute():
                setattr(task, split, str((data_dir / value).resolve()))
    if cfg.method.demos_override:
        cfg.method.demos_override = {
            k: str((data_dir / v).resolve()) if not Path(v).is_absolute() else v
            for k, v in cfg.method.demos_override.items()
        }
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: obj}


def diff(old: dict, new: dict, ignore: tuple[str, ...] = RUNTIME_KEYS) -> list[str]:
    """Human-readable differences between two config dicts, one line per changed key."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines
