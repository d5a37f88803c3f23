"""Crash-safety harness: SIGKILL an `ssr run` at random points, rerun it, compare with an uninterrupted run.

A tiny random-weight model (the one tests/conftest.py builds) runs SSR on two toy tasks, so a
whole run takes seconds and covers every kind of step: base evaluation, training, synthesis,
refinement, evaluation and the file writes between them. For each kill point the harness
starts a fresh run, kills it with SIGKILL (no chance to clean up) either inside a chosen phase
(it waits for the phase's line in run.log, then a random short delay) or after a uniformly
random delay, reruns the same command to completion, and compares every file the run wrote
(results, synthetic sets and candidates, training rows, predictions, adapters) with the
uninterrupted run of the same seed. Timing fields (seconds, tokens/s, wall time) are left out.

    python benchmarks/kill_harness.py --points 20 [--seed 0] [--work DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny model and toy tasks of the test suite

# Phase -> the run.log line that starts it ("anywhere" = a uniform random delay instead).
PHASES = {
    "training": "training on",
    "synthesis": "synthesizing",
    "refinement": "refining",
    "evaluation": "evaluating",
    "anywhere": None,
}
TIMING_KEYS = {"seconds", "tokens_per_s", "wall_seconds"}
IGNORED_FILES = {"run.log", "timings.jsonl", ".lock"}


def build_setup(work: Path) -> Path:
    """Toy tasks, the tiny model and an SSR config in `work`; returns the config path."""
    from conftest import build_tiny_model, rewire_eos_rate, tiny_config, write_toy_tasks
    from transformers import AutoTokenizer, LlamaForCausalLM

    (work / "tasks").mkdir(parents=True, exist_ok=True)
    (work / "model").mkdir(exist_ok=True)
    task_dir = write_toy_tasks(work / "tasks")
    model_dir = build_tiny_model(work / "model", task_dir)
    # The ICL model: the tiny model rewired to end its generations by EOS (as tests/test_ssr_method.py
    # does), so synthesis keeps candidates and refinement has work to do.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stopping = LlamaForCausalLM.from_pretrained(model_dir)
    rewire_eos_rate(stopping, tokenizer.eos_token_id, 3.0)
    stopping.save_pretrained(work / "icl-model")
    tokenizer.save_pretrained(work / "icl-model")
    cfg = tiny_config(task_dir, model_dir, "ssr", tasks=("reverse", "upper"), selection="random", per_task=6, max_prompts=6,
                      samples_per_prompt=2, synth_max_new_tokens=12, batch_size=8, icl_model=str(work / "icl-model"))
    # Longer answers and two epochs: every step lasts long enough (0.1-1 s) to be hit by a kill.
    cfg["eval"]["max_new_tokens"], cfg["train"]["epochs"] = 48, 2
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


_FORK_SERVER: multiprocessing.context.ForkServerContext | None = None


def _fork_server() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's fork server, with ssr and its libraries imported once: each run is forked
    from it, a process of its own (its pid, its signals, its exit code) that starts in well under
    a second instead of the ~13 s those imports take on a 2-core machine. The server imports but
    never computes, so no thread pool exists yet when it forks."""
    global _FORK_SERVER
    if _FORK_SERVER is None:
        _FORK_SERVER = multiprocessing.get_context("forkserver")
        _FORK_SERVER.set_forkserver_preload(["ssr.cli", "ssr.runner"])
    return _FORK_SERVER


def _ssr_cli(argv: list[str], stderr_path: str) -> None:
    """The forked process: `ssr <argv>`, its stderr to `stderr_path`, its exit code the CLI's."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    # Ctrl-C's usual meaning: the fork server ignores SIGINT, and so does a command started with
    # `&` by a non-interactive shell (CI, nohup); the SIGINT test's signal would be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from ssr.cli import main

    sys.exit(main(argv))


class RunProcess:
    """A started `ssr run`: the part of `subprocess.Popen` the harness and the tests use."""

    def __init__(self, argv: list[str]):
        fd, name = tempfile.mkstemp(prefix="ssr-run-", suffix=".stderr")
        os.close(fd)
        self._stderr = Path(name)
        weakref.finalize(self, self._stderr.unlink, missing_ok=True)  # gone with the object, as a pipe would be
        self._process = _fork_server().Process(target=_ssr_cli, args=(argv, str(self._stderr)))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code; minus the signal's number for a process a signal ended (as Popen's)."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"ssr run (pid {self.pid})", timeout)
        return self._process.exitcode

    def stderr(self) -> str:
        """What the run has written to stderr so far."""
        return self._stderr.read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[None, bytes]:
        self.wait(timeout)
        return None, self.stderr().encode()


def start_run(config: Path, out: Path) -> RunProcess:
    return RunProcess(["run", str(config), "-o", str(out)])


def finish(proc: RunProcess, timeout: float = 600) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # not left running after its test gave up (seen on a loaded machine)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"ssr run failed ({proc.returncode}): {err.decode()[-2000:]}")


def _normalise(path: Path) -> bytes:
    """File content without timing fields (JSON files), else the raw bytes."""
    if path.suffix != ".json":
        return path.read_bytes()

    def drop(obj):
        if isinstance(obj, dict):
            return {k: drop(v) for k, v in obj.items() if k not in TIMING_KEYS}
        if isinstance(obj, list):
            return [drop(v) for v in obj]
        return obj

    doc = drop(json.loads(path.read_text()))
    if path.name == "adapter_config.json":  # PEFT writes this set in hash order, which varies per process
        doc["target_modules"] = sorted(doc.get("target_modules") or [])
    return json.dumps(doc, sort_keys=True).encode()


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): _normalise(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in IGNORED_FILES}


def compare(reference: dict[str, bytes], run_dir: Path) -> list[str]:
    """Files that differ from the reference run, or exist in only one of them."""
    got = run_files(run_dir)
    return sorted(k for k in set(reference) | set(got) if reference.get(k) != got.get(k))


def _log_count(run_dir: Path, marker: str) -> int:
    log = run_dir / "run.log"
    return log.read_text(errors="replace").count(marker) if log.exists() else 0


# Where a kill landed, from the last line of run.log (each step logs a line when it starts).
LANDINGS = (("training on", "training"), ("synthesizing", "synthesis"), ("refining", "refinement"),
            ("evaluating", "evaluation"), ("results:", "after the results"), ("run ", "loading"))


def landed_in(last_log_line: str) -> str:
    if not last_log_line:
        return "start-up (before the directory was claimed)"
    return next((name for marker, name in LANDINGS if marker in last_log_line), "between steps")


def kill_point(config: Path, out: Path, phase: str, reference_log: str, reference_seconds: float,
               rng: random.Random) -> dict:
    """Start a run, SIGKILL it in `phase`, rerun it to the end. Returns what happened."""
    marker = PHASES[phase]
    proc = start_run(config, out)
    started = time.monotonic()
    if marker is None:
        target = f"after {rng.uniform(0.0, reference_seconds):.2f} s"
        deadline = started + float(target.split()[1])
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    else:
        occurrence = rng.randint(1, max(1, reference_log.count(marker)))
        target = f"{phase} #{occurrence}"
        while _log_count(out, marker) < occurrence and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))  # the tiny model's steps take tens of milliseconds
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = out / ".lock"
    try:  # a run killed while holding the lock leaves its pid there: the rerun must take it over
        stale_lock_pid = json.loads(lock.read_text())["pid"] if lock.exists() and lock.read_text().strip() else None
    except (ValueError, KeyError):
        stale_lock_pid = None
    last_line = ((out / "run.log").read_text(errors="replace").strip().splitlines() or [""])[-1] \
        if (out / "run.log").exists() else ""
    point = {"phase": phase, "target": target, "killed": killed, "landed": landed_in(last_line),
             "killed_pid": proc.pid, "stale_lock_pid": stale_lock_pid,
             "killed_after_s": round(time.monotonic() - started, 2), "last_log_line": last_line[24:]}
    finish(start_run(config, out))
    return point


def own_folder(work: Path, name: str) -> Path:
    """A run directory alone in a folder of its own: SSR reuses the samples of a sibling run with
    the same key (ssr.synthesis.reuse), and each run here must draw its own."""
    return work / name / "run"


def run_harness(points: int, seed: int, work: Path, echo=print) -> dict:
    """The whole harness: reference run, `points` kill-and-resume runs, comparison of each."""
    rng = random.Random(seed)
    config = build_setup(work)
    reference_dir = own_folder(work, "reference")
    started = time.monotonic()
    finish(start_run(config, reference_dir))
    reference_seconds = time.monotonic() - started
    reference = run_files(reference_dir)
    reference_log = (reference_dir / "run.log").read_text()
    echo(f"reference run: {reference_seconds:.1f} s, {len(reference)} files compared")
    phases = list(PHASES)
    results = []
    for k in range(points):
        phase = phases[k % len(phases)] if k < len(phases) else rng.choice(phases)
        out = own_folder(work, f"killed-{k}")
        point = kill_point(config, out, phase, reference_log, reference_seconds, rng)
        point["differences"] = compare(reference, out)
        point["identical"] = not point["differences"]
        results.append(point)
        echo(f"[{k + 1}/{points}] aimed at {point['target']:<16} killed={point['killed']!s:<5} landed in "
             f"{point['landed']:<12} identical={point['identical']}  last log line: {point['last_log_line'][:60]}")
    killed = [p for p in results if p["killed"]]
    landed: dict[str, int] = {}
    for p in killed:
        landed[p["landed"]] = landed.get(p["landed"], 0) + 1
    return {"points": points, "killed": len(killed), "identical": sum(p["identical"] for p in killed), "landed": landed,
            "reference_seconds": round(reference_seconds, 1), "seed": seed, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--json", help="write the per-point results here")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ssr-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    summary = run_harness(args.points, args.seed, work)
    print(f"{summary['killed']} kill points, {summary['identical']} identical "
          f"({summary['points'] - summary['killed']} runs finished before their kill); landed in: "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary["landed"].items(), key=lambda kv: -kv[1])))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["identical"] == summary["killed"] else 1


if __name__ == "__main__":
    sys.exit(main())
