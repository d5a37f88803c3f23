"""A reused run directory refuses any config that would change results, and only those.

The README: "A *different* config in an existing directory is refused with the list of changed
keys (`eval.batch_size` and `method.batch_size` only change speed and may differ)". Each key
below changes what a run computes (the tasks, the data, the model, training, evaluation,
synthesis); no model is loaded: the directory's claim is the check.
"""

from __future__ import annotations

import copy

import pytest

from conftest import tiny_config
from ssr.config import load_config
from ssr.errors import RunDirError
from ssr.runner import RunDir

# (key path in the raw config, new value); every one changes the computation.
RESULT_KEYS = [
    (("seed",), 8),
    (("model", "name"), "/elsewhere/other-model"),
    (("model", "template"), "vanilla"),
    (("model", "dtype"), "bfloat16"),
    (("generation", "backend"), "vllm"),
    (("generation", "vllm_adapters"), "lora"),
    (("data", "max_train_examples"), 5),
    (("data", "skip_bad_rows"), True),
    (("tasks", 0, "name"), "renamed"),
    (("tasks", 0, "train"), "upper.eval.jsonl"),
    (("tasks", 0, "eval"), "upper.train.jsonl"),
    (("tasks", 0, "demos"), "upper.train.jsonl"),
    (("tasks", 0, "max_new_tokens"), 3),
    (("tasks", 0, "definition"), "Say it louder."),
    (("tasks", 0, "language"), "es"),
    (("train", "epochs"), 2),
    (("train", "lr"), 0.5),
    (("train", "batch_size"), 2),
    (("train", "grad_accum"), 1),
    (("train", "max_source_length"), 32),
    (("train", "adapter"), "new"),
    (("train", "group_by_length"), False),
    (("train", "lora", "r"), 4),
    (("train", "lora", "targets"), ["q_proj"]),
    (("eval", "max_examples"), 2),
    (("eval", "max_new_tokens"), 9),
    (("eval", "scorer"), "release"),
    (("eval", "schedule"), "metrics"),
    (("method", "n_clusters"), 3),
    (("method", "temperature"), 0.5),
    (("method", "top_p"), 0.9),
    (("method", "repetition_penalty"), 1.0),
    (("method", "samples_per_prompt"), 1),
    (("method", "kmeans_fit"), "demos"),
    (("method", "icl_model"), "/elsewhere/icl"),
    (("method", "refine"), False),
]
RUNTIME_KEYS = [
    (("eval", "batch_size"), 1),
    (("method", "batch_size"), 3),
    (("generation", "kv_cache_gb"), 1.0),
    (("generation", "gpu_memory_utilization"), 0.9),
]


def _set(raw: dict, path: tuple, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return raw


@pytest.fixture()
def claimed(task_dir, tmp_path):
    """A run directory claimed by an SSR config, with one finished step (a prediction file)."""
    raw = tiny_config(task_dir, tmp_path / "model", "ssr", tasks=("upper", "count"))
    run_dir = RunDir(tmp_path / "run")
    run_dir.claim(load_config(None, raw=raw))
    done = tmp_path / "run" / "stages" / "0-base" / "predictions" / "upper.jsonl"
    done.parent.mkdir(parents=True)
    done.write_text("{}\n")
    return raw, run_dir


@pytest.mark.parametrize("path, value", RESULT_KEYS, ids=[".".join(map(str, p)) for p, _ in RESULT_KEYS])
def test_every_key_that_changes_results_is_refused(claimed, path, value):
    raw, run_dir = claimed
    dotted = ".".join(map(str, path))
    with pytest.raises(RunDirError, match=rf"Differences \(saved -> now\): .*{dotted.replace('.', '[.]')}\b"):
        run_dir.claim(load_config(None, raw=_set(raw, path, value)))


def test_task_order_is_refused(claimed):
    raw, run_dir = claimed
    swapped = {**raw, "tasks": raw["tasks"][::-1]}
    with pytest.raises(RunDirError, match=r"tasks\.0\.name: 'upper' -> 'count'"):
        run_dir.claim(load_config(None, raw=swapped))


@pytest.mark.parametrize("path, value", RUNTIME_KEYS, ids=[".".join(map(str, p)) for p, _ in RUNTIME_KEYS])
def test_runtime_only_keys_may_change(claimed, path, value):
    raw, run_dir = claimed
    run_dir.claim(load_config(None, raw=_set(raw, path, value)))  # no error


def test_every_difference_is_named_in_one_refusal(claimed):
    raw, run_dir = claimed
    changed = _set(_set(raw, ("train", "lr"), 0.5), ("seed", ), 8)
    with pytest.raises(RunDirError) as refused:
        run_dir.claim(load_config(None, raw=changed))
    assert str(refused.value).endswith("Differences (saved -> now): seed: 7 -> 8; train.lr: 0.001 -> 0.5")


def test_a_directory_without_a_finished_step_takes_a_corrected_config(task_dir, tmp_path, caplog):
    raw = tiny_config(task_dir, tmp_path / "model", tasks=("upper",))
    run_dir = RunDir(tmp_path / "run")
    run_dir.claim(load_config(None, raw=raw))
    corrected = _set(raw, ("train", "lr"), 0.5)
    with caplog.at_level("INFO", logger="ssr"):
        run_dir.claim(load_config(None, raw=corrected))  # nothing finished: the config is replaced
    assert "lr: 0.5" in (tmp_path / "run" / "config.yaml").read_text()
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'run'}: replacing the config of a run that finished no step"]


def test_a_vllm_run_saved_before_vllm_adapters_existed_served_lora(task_dir, tmp_path):
    """Runs saved before `generation.vllm_adapters` served every stage as a LoRA request: they
    resume under `lora` and refuse `merged` (bf16 weights merged round differently)."""
    import yaml

    raw = _set(tiny_config(task_dir, tmp_path / "model", tasks=("upper",)), ("generation", "backend"), "vllm")
    lora, merged = (_set(raw, ("generation", "vllm_adapters"), mode) for mode in ("lora", "merged"))
    run_dir = RunDir(tmp_path / "run")
    run_dir.claim(load_config(None, raw=lora))
    done = run_dir.path / "stages" / "0-base" / "predictions" / "upper.jsonl"
    done.parent.mkdir(parents=True)
    done.write_text("{}\n")
    saved = yaml.safe_load((run_dir.path / "config.yaml").read_text())
    del saved["generation"]["vllm_adapters"]
    (run_dir.path / "config.yaml").write_text(yaml.safe_dump(saved))
    run_dir.claim(load_config(None, raw=lora))  # no error
    with pytest.raises(RunDirError, match=r"generation[.]vllm_adapters: 'lora' -> 'merged'"):
        run_dir.claim(load_config(None, raw=merged))


def test_progress_is_a_results_file_or_any_file_a_step_wrote(tmp_path):
    """What makes a directory hold a run that a different config must not take over: its
    results.json alone, or any file under stages/, synthetic/ or rehearsal/ (empty folders are not)."""
    from ssr.runner import RunDir

    path = tmp_path / "run"
    (path / "stages" / "1-reverse").mkdir(parents=True)
    (path / "notes.txt").write_text("not a step")
    run_dir = RunDir(path)
    assert not run_dir.has_progress()
    (path / "results.json").write_text("{}")
    assert run_dir.has_progress()
    (path / "results.json").unlink()
    for folder in ("stages", "synthetic", "rehearsal"):
        (path / folder / "deep").mkdir(parents=True, exist_ok=True)
        (path / folder / "deep" / "x.jsonl").write_text("")
        assert run_dir.has_progress(), folder
        (path / folder / "deep" / "x.jsonl").unlink()
    assert not run_dir.has_progress()


def test_the_run_log_is_created_with_its_folders_and_takes_info_lines(tmp_path):
    import logging

    from ssr.runner import setup_logging

    handler = setup_logging(tmp_path / "new" / "run")
    try:
        logging.getLogger("ssr").info("stage 1-x, task x: évaluation")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert (tmp_path / "new" / "run" / "run.log").read_text(encoding="utf-8").endswith(
        "INFO ssr: stage 1-x, task x: évaluation\n")


def test_caches_are_prepared_in_the_configured_cache_dir(task_dir, tiny_model_dir, tmp_path):
    """Before the other processes load, the run measures this CPU's bf16 speed for the vLLM
    engine's `model.dtype: auto` once, into `model.cache_dir`; the hf engine needs no measurement."""
    from conftest import tiny_config
    from ssr.config import load_config
    from ssr.runner import prepare_caches

    for backend, measured in (("hf", False), ("vllm", True)):
        raw = tiny_config(task_dir, tiny_model_dir, backend=backend)
        raw["model"].update(dtype="auto", cache_dir=str(tmp_path / backend))
        prepare_caches(load_config(None, raw=raw))
        assert bool(list((tmp_path / backend).glob("cpu-bf16-*.json"))) is measured, backend


def test_an_unreadable_config_beside_finished_steps_is_refused_with_what_to_do(claimed, tmp_path):
    raw, run_dir = claimed
    (tmp_path / "run" / "config.yaml").write_text("[: not yaml")
    expected = (f"{tmp_path / 'run' / 'config.yaml'}: not a readable run config, yet the directory "
                "holds finished steps; restore the file or use another --output-dir")
    for refuse in (lambda: run_dir.claim(load_config(None, raw=raw)), run_dir.check):  # check: before any loading
        with pytest.raises(RunDirError) as refused:
            refuse()
        assert str(refused.value) == expected


def test_an_output_dir_that_cannot_be_created_says_why(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError) as refused:
        RunDir(tmp_path / "file" / "run").create()
    assert str(refused.value) == f"--output-dir {tmp_path / 'file' / 'run'}: cannot be created (Not a directory)"


def test_an_empty_output_dir_is_refused():
    with pytest.raises(RunDirError) as refused:
        RunDir("")
    assert str(refused.value) == "--output-dir is empty; give the run directory"
