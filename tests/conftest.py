"""Shared fixtures: a tiny random-weight Llama with its own BPE tokenizer, and tiny tasks on disk.

Nothing is downloaded: the tokenizer is trained here on the task texts and the model is built
from a config (random weights are fine for plumbing; quality claims use SmolLM2-135M).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# The files whose tests take longest (vLLM engine start-ups, launched processes): collected first,
# longest first, so that under pytest-xdist (`make test`) each starts at once on a worker instead
# of last on one while the other idles. Each file keeps its own order.
SLOW_FILES = ("test_distributed.py", "test_vllm.py", "test_vllm_lora.py", "test_crash.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: SLOW_FILES.index(item.path.name) if item.path.name in SLOW_FILES else len(SLOW_FILES))


def pytest_configure(config):
    # vLLM's own switch for its CPU CI: a merged engine runs its traced graph eagerly instead of
    # compiling it with inductor (~25 s per engine here on a machine whose compile cache is cold,
    # as CI's is). The tests compare the engine's outputs with transformers'; the compiled path is
    # what `make bench` and the throughput benchmark run.
    os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
    # vLLM's engine core and its CPU worker in the test process (vLLM's in-process mode with its
    # single-process executor) instead of two spawned processes that import vLLM and torch again:
    # test_vllm.py and test_vllm_lora.py took 47 s instead of 93 s here (2 workers, AMD EPYC,
    # 2 cores). The same model code and sampler serve the requests; ssr's bookkeeping of engine
    # processes (register, reap an orphan) is tested with real processes in test_reliability.py.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Under xdist the workers share the cores: one torch thread pool each, sized to its share,
    # rather than every worker spinning a pool as large as the machine.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def shared_superni() -> Path:
    """The shared SuperNI split: `$SSR_SHARED_DATA` (the folder holding `superni/`, or that folder
    itself) when set, else `../shared/data/superni` beside the repository (where CI and this
    project's machines keep it)."""
    env = os.environ.get("SSR_SHARED_DATA")
    if env:
        root = Path(env).expanduser()
        return root if (root / "sa.train.jsonl").exists() else root / "superni"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "superni"


SHARED_SUPERNI = shared_superni()
SHARED_SKIP_REASON = (f"shared SuperNI data not found at {SHARED_SUPERNI}: set SSR_SHARED_DATA to the folder holding "
                      "superni/ (e.g. shared/data) or keep it at ../shared/data/superni beside the repository")

WORDS = "apple river stone cloud green quick seven table music light paper bread ocean silver window garden".split()


def make_task_rows(kind: str, n: int, seed: int) -> list[dict]:
    """Rows of a toy task in the SuperNI split format (definition + blank line + input)."""
    rng = random.Random(seed)
    definitions = {
        "reverse": "Reverse the order of the words in the input.",
        "upper": "Write the input in upper case.",
        "count": "Count the words in the input and answer with a number.",
    }
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(2, 5))
        text = " ".join(words)
        output = {"reverse": " ".join(reversed(words)), "upper": text.upper(), "count": str(len(words))}[kind]
        rows.append({"id": f"{kind}-{seed}-{i}", "input": text, "output": output,
                     "full_prompt": f"{definitions[kind]}\n\n{text}", "task_name": kind})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def unreadable_files(monkeypatch):
    """Every file read through `Path.read_bytes` fails as a file without read permission would
    (permissions alone cannot do it here: the tests may run as root)."""

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    return write_toy_tasks(tmp_path_factory.mktemp("tasks"))


def write_toy_tasks(d: Path) -> Path:
    """train (24) / eval (6) / demos (6) files of the three toy tasks in `d`."""
    for k, kind in enumerate(("reverse", "upper", "count")):
        write_jsonl(d / f"{kind}.train.jsonl", make_task_rows(kind, 24, seed=k))
        write_jsonl(d / f"{kind}.eval.jsonl", make_task_rows(kind, 6, seed=100 + k))
        write_jsonl(d / f"{kind}.demos.jsonl", make_task_rows(kind, 6, seed=200 + k))
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, task_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), task_dir)


def build_tiny_model(d: Path, task_dir: Path) -> Path:
    """A 2-layer Llama (hidden 64, head size 32: the smallest vLLM's CPU attention serves) and a byte-level BPE tokenizer trained on the toy tasks, saved in `d`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    for path in task_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts += [row["full_prompt"], row["output"], "Input: Output:"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(d)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(d)
    return d


def tiny_config(task_dir: Path, model_dir: Path, method: str = "sequential", tasks=("reverse", "upper", "count"),
                backend: str = "hf", **method_opts) -> dict:
    """A raw config dict for a fast run on the tiny model (fp32 weights and training, the `hf`
    backend unless asked)."""
    return {
        "seed": 7,
        "model": {"name": str(model_dir), "template": "raw", "dtype": "float32"},
        "generation": {"backend": backend, "kv_cache_gb": 0.25},
        "data": {"dir": str(task_dir)},
        "eval": {"max_examples": 4, "max_new_tokens": 6, "batch_size": 4},
        # fp32 training everywhere: `auto` would pick bf16 autocast on some CPUs and not others
        "train": {"epochs": 1, "batch_size": 4, "grad_accum": 2, "lr": 1e-3, "max_source_length": 64, "max_target_length": 16,
                  "bf16": "off"},
        "method": {"name": method, **method_opts},
        "tasks": [{"name": t, "train": f"{t}.train.jsonl", "eval": f"{t}.eval.jsonl", "demos": f"{t}.demos.jsonl"} for t in tasks],
    }


def save_perturbed_lora(model_dir: Path, path: Path, r: int, alpha: int, seed: int, noise_seed: int = 0) -> Path:
    """A LoRA adapter on the model in `model_dir` whose B matrices are far from zero (N(0, 0.5),
    seeded per matrix by `noise_seed` + the length of its name), so it visibly changes the answers;
    saved in `path`."""
    import torch

    from ssr.config import LoraSettings
    from ssr.models import load_base_model
    from ssr.models.lora import attach_lora, save_adapter

    model = attach_lora(load_base_model(str(model_dir)), LoraSettings(r=r, alpha=alpha, dropout=0.0), seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(noise_seed + len(name)))
    save_adapter(model, path)
    return path


def rewire_eos_rate(model, eos_id: int, eos_logit: float) -> None:
    """Give EOS a logit of about `eos_logit` at every step, whatever the context.

    Residual dimension 0 is held constant: every token embeds 1.0 there and no layer writes to
    it, so after the final RMSNorm it is a positive constant (about sqrt(hidden size)); the
    output layer reads only EOS from it. The random tiny model otherwise almost never stops.
    """
    import torch

    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0
            layer.mlp.down_proj.weight[0, :] = 0
        model.lm_head.weight[:, 0] = 0
        model.lm_head.weight[eos_id, 0] = eos_logit / model.config.hidden_size ** 0.5


@pytest.fixture(scope="session")
def stopping_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model rewired so that its sampled generations end by EOS after a few tokens
    (EOS logit 3: about one step in six under the synthesis sampler)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    d = tmp_path_factory.mktemp("stopping-llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    rewire_eos_rate(model, tokenizer.eos_token_id, 3.0)
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return at_content_path(d, "stopping-llama")


def at_content_path(d: Path, name: str) -> Path:
    """`d`'s files at a path named by their content, the same in every session on this machine.

    vLLM keys its compile cache by the model's path among other settings: at a fresh tmp path
    each engine start traces and compiles again; at this path only the first session's does
    (test_vllm.py alone, its engine then spawned in processes of its own: 116 s with a fresh
    `$TMPDIR`, 89 s the next time).
    A changed model gets another path; a copy whose files no longer match is replaced."""
    import hashlib
    import shutil
    import tempfile

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
        return h.hexdigest()

    want = digest(d)
    target = Path(tempfile.gettempdir()) / "ssr-test-models" / f"{name}-{want[:16]}"
    if target.is_dir() and digest(target) == want:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    shutil.copytree(d, staged, dirs_exist_ok=True)
    # Not ssr.io.atomic_path: it removes whatever is at the target, which may be the copy another
    # worker renamed there a moment ago and is loading now. Only a damaged copy is removed here.
    if target.is_dir() and digest(target) != want:
        shutil.rmtree(target, ignore_errors=True)
    try:
        staged.rename(target)  # atomic: another worker sees the whole copy or none
    except OSError:  # another worker put its copy there first: the same files
        shutil.rmtree(staged, ignore_errors=True)
    return target


SSR_OPTS = dict(per_task=3, n_clusters=2, max_prompts=5, samples_per_prompt=2, synth_max_new_tokens=12, batch_size=8)
"""SSR settings for the tiny runs: 5 ICL prompts x 2 samples of at most 12 new tokens, 3 rehearsed per task."""


@pytest.fixture(scope="session")
def ssr_run(task_dir, tiny_model_dir, stopping_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One finished SSR run over the three toy tasks, shared by every test that reads its files:
    base model the random tiny one, ICL model the EOS-rewired one (the random model almost never
    stops, and the cut last chunk of a generation is never kept, so it would leave nothing)."""
    from ssr.config import load_config
    from ssr.runner import run

    out = tmp_path_factory.mktemp("ssr-run") / "run"
    raw = tiny_config(task_dir, tiny_model_dir, "ssr", **SSR_OPTS, icl_model=str(stopping_model_dir))
    run(load_config(None, raw=raw), out)
    return out, raw


def greedy_raw_by_hand(model, tokenizer, definition: str, inputs: list[str], max_new_tokens: int,
                       max_source_length: int | None = None) -> list[str]:
    """Greedy answers through the `raw` template written out by hand (README: `{definition}\\n\\nInput:
    {input}\\nOutput:` with the tokenizer's own special tokens), one prompt at a time, by
    transformers' own greedy search: a reference independent of the project's generators.
    `max_source_length`: the prompt's last that many tokens (README: the start is cut)."""
    import torch

    outputs = []
    with torch.no_grad():
        for x in inputs:
            ids = tokenizer(f"{definition}\n\nInput: {x}\nOutput:", add_special_tokens=True, return_tensors="pt")["input_ids"]
            ids = ids[:, -max_source_length:] if max_source_length else ids
            ids = ids.to(model.device)
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
            outputs.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return outputs
