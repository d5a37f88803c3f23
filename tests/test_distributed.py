"""Two processes under `accelerate launch` (gloo on the CPU) against one process, on the tiny model.

The reference is the one-process run of the same config with the same global batch
(`batch_size` 5 x `grad_accum` 2 x 1 process against 5 x 1 x 2): scores, predictions and
adapters must agree to floating-point tolerance, every evaluation row must be answered once,
and a two-process run killed with SIGKILL (launcher and workers together, as when a node
dies) must rerun to the same results.

accelerate 1.15's `--cpu` flag starts a single process whatever `--num_processes` says (it
leaves multi-CPU to mpirun), so the launch uses `--multi_gpu` (torchrun); without a GPU, ssr
puts each process on the CPU (ssr.distributed.get_accelerator).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_harness  # noqa: E402
from conftest import tiny_config  # noqa: E402
from ssr.config import load_config  # noqa: E402
from ssr.io import read_jsonl  # noqa: E402
from ssr.runner import run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ("reverse", "upper")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun, gloo and POSIX process groups")


def _config(task_dir: Path, model_dir: Path, method: str, processes: int, **method_opts) -> dict:
    cfg = tiny_config(task_dir, model_dir, method, tasks=TASKS, **method_opts)
    # 24 rows in micro-batches of 5: 5 micro-batches an epoch, so the last step of each epoch is
    # short and the second process runs a zero-weight stand-in there.
    cfg["train"].update(batch_size=5, grad_accum=2 // processes)
    cfg["eval"]["max_examples"] = 5  # an odd count: the processes answer 3 and 2
    return cfg


def _ssr_opts(icl_model: Path) -> dict:
    return dict(selection="random", per_task=6, max_prompts=6, samples_per_prompt=2, synth_max_new_tokens=12,
                batch_size=8, icl_model=str(icl_model))


def _free_port() -> int:
    with socket.socket() as s:  # other jobs on this machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: dict, path: Path, out: Path, processes: int = 2) -> subprocess.Popen:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = _env()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "ssr.cli", "run", str(path), "-o", str(out)]
    # A session of its own: the test can kill the launcher and its workers together.
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


def _env() -> dict:
    # CPU processes (gloo), also on a GPU machine: two processes would need two GPUs. One thread
    # each: on a loaded 2-core machine two spinning threads per process made runs 10x slower.
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "", "SSR_DIST_TIMEOUT_MINUTES": "8"}  # a hung collective fails the test, not 12 h


def _one_process_run(config: dict, out: Path) -> None:
    """The reference, on the CPU like the launched workers: in this process where no GPU is
    visible (no start-up cost), else in a subprocess with the GPU hidden."""
    if torch.cuda.is_available():
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "ssr.cli", "run", str(path), "-o", str(out)], env=_env(),
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(load_config(None, raw=config), out)
    finally:
        torch.set_num_threads(threads)


def _adapters(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(run_dir)): load_file(p) for p in sorted(run_dir.rglob("adapter_model.safetensors"))}


def _assert_same_computation(one: Path, two: Path, task_dir: Path) -> None:
    """Two processes did what one did: the score matrix, every prediction, every adapter weight."""
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r2["processes"] == 2 and r1["processes"] == 1
    assert "2 process(es)" in (two / "run.log").read_text() and "1 process(es)" in (one / "run.log").read_text()
    assert r2["scores"] == [[pytest.approx(v, abs=1e-6) for v in row] for row in r1["scores"]]
    for key in ("AR", "FWT", "BWT"):
        assert r2[key] == pytest.approx(r1[key], abs=1e-6)
    a1, a2 = _adapters(one), _adapters(two)
    assert sorted(a1) == sorted(a2) and a1
    for name in a1:
        for weight in a1[name]:
            torch.testing.assert_close(a2[name][weight], a1[name][weight], rtol=1e-5, atol=1e-6)
    for stats in one.rglob("train_stats.json"):  # the same number of steps and tokens over all processes
        s1, s2 = json.loads(stats.read_text()), json.loads((two / stats.relative_to(one)).read_text())
        assert (s2["steps"], s2["tokens"]) == (s1["steps"], s1["tokens"])
        assert s2["final_loss"] == pytest.approx(s1["final_loss"], rel=1e-5)
    predictions = sorted(one.rglob("predictions/*.jsonl"))
    assert len(predictions) == 3 * len(TASKS)  # base + 2 stages, each task
    for path in predictions:
        rows1, rows2 = read_jsonl(path), read_jsonl(two / path.relative_to(one))
        eval_ids = [r["id"] for r in rows1]
        # every evaluation row answered and scored once, none twice, in the task's order
        assert [r["id"] for r in rows2] == eval_ids and len(set(eval_ids)) == len(eval_ids) == 5
        assert [r["prediction"] for r in rows2] == [r["prediction"] for r in rows1]
    for name in TASKS:
        all_ids = {r["id"] for r in read_jsonl(task_dir / f"{name}.eval.jsonl")}
        assert {r["id"] for r in read_jsonl(two / "stages" / "0-base" / "predictions" / f"{name}.jsonl")} <= all_ids


def test_sequential_under_two_processes_is_the_one_process_run(task_dir, tiny_model_dir, tmp_path):
    """With a new adapter per stage (`train.adapter: new`; the SSR test below keeps one adapter).
    Then the same launch again after a crash between stage 2's training and its evaluation (its
    adapter saved, no predictions yet): the processes load stage 1's adapter merged under stage
    2's from disk, and evaluate as the one-process run did."""
    configs = {n: _config(task_dir, tiny_model_dir, "sequential", n) for n in (1, 2)}
    for config in configs.values():
        config["train"]["adapter"] = "new"
    proc = _launch(configs[2], tmp_path / "two.yaml", tmp_path / "two")
    one = tmp_path / "one"
    _one_process_run(configs[1], one)
    printed = _finish(proc)
    assert printed.count("AR ") == 1, "the main process prints the results, once"
    _assert_same_computation(one, tmp_path / "two", task_dir)
    log = (tmp_path / "two" / "run.log").read_text()
    assert "2 process(es)" in log and log.count("stage 0-base, task reverse: evaluating") == 1
    messages = [line.split(" ", 2)[2] for line in log.splitlines() if line[:2] == "20"]  # past the date and time
    assert len(messages) == len(set(messages)), "the main process alone writes run.log: no line twice"
    assert json.loads((tmp_path / "two" / "results.json").read_text())["processes"] == 2
    steps = lambda run_dir: [row["step"] for row in read_jsonl(run_dir / "timings.jsonl")]  # noqa: E731
    assert steps(tmp_path / "two") == steps(one), "the main process alone records each step's time, once"

    shutil.rmtree(tmp_path / "two" / "stages" / "2-upper" / "predictions")  # what the crash left
    (tmp_path / "two" / "results.json").unlink()
    _finish(_launch(configs[2], tmp_path / "two.yaml", tmp_path / "two"))
    assert sorted(p.name for p in (tmp_path / "two" / "stages" / "2-upper" / "predictions").iterdir()) == ["reverse.jsonl", "upper.jsonl"]
    _assert_same_computation(one, tmp_path / "two", task_dir)


def test_ssr_under_two_processes_killed_in_training_reruns_to_the_one_process_run(task_dir, tiny_model_dir,
                                                                                stopping_model_dir, tmp_path):
    """SIGKILL to the launcher and both workers during stage 1's training, then the same command
    again: the finished run is the one-process run. (One test, not two, to save a launch: the
    killed launch evaluated the base model, the rerun did everything from stage 1 on, SSR's
    synthesis on the main process and refinement split across both.)"""
    opts = _ssr_opts(stopping_model_dir)
    config, out = _config(task_dir, tiny_model_dir, "ssr", 2, **opts), tmp_path / "two"
    proc = _launch(config, tmp_path / "two.yaml", out)
    deadline = time.monotonic() + 600
    while not ((out / "run.log").exists() and "training on" in (out / "run.log").read_text(errors="replace")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no training within 600 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "stages" / "1-reverse" / "adapter").exists(), "the kill landed after stage 1's training"
    assert (out / "stages" / "0-base" / "predictions" / "upper.jsonl").exists()
    assert json.loads((out / ".lock").read_text())["pid"] > 0, "the killed main process held the lock"

    rerun = _launch(config, tmp_path / "two.yaml", out)
    one = tmp_path / "reference" / "one"  # no sibling to reuse the samples of: it draws its own
    _one_process_run(_config(task_dir, tiny_model_dir, "ssr", 1, **opts), one)
    _finish(rerun)
    assert (out / ".lock").read_text() == "", "the rerun took the dead run's lock over, and released it"
    assert not [p for p in out.rglob(".*") if p.name != ".lock"], "a killed write's temporary was left behind"
    _assert_same_computation(one, out, task_dir)
    # synthesis (main process) and the refined rehearsal set (split) as on one process
    differ = kill_harness.compare(kill_harness.run_files(one), out)
    assert [f for f in differ if not f.startswith(("stages/", "results.json", "config.yaml"))] == []
    rehearsed = read_jsonl(out / "synthetic" / "reverse.jsonl")
    assert rehearsed and all(r["source"] == "synthetic" for r in rehearsed)
    assert len([r for r in read_jsonl(out / "stages" / "2-upper" / "train.jsonl") if r["source"] == "synthetic"]) == len(rehearsed)


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize("name, kind, zero_stage", [("single-gpu", "NO", None), ("multi-gpu", "MULTI_GPU", None),
                                                   ("deepspeed-zero2", "DEEPSPEED", 2), ("deepspeed-zero3", "DEEPSPEED", 3)])
def test_accelerate_config_files_parse(name, kind, zero_stage):
    """accelerate's own parser reads each file (it refuses unknown keys); precision is left to ssr."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "no"
    assert (config.deepspeed_config or {}).get("zero_stage") == zero_stage
    if zero_stage == 3:
        assert config.deepspeed_config["zero3_init_flag"] is True  # shards the weights as they load
