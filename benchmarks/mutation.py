"""Mutation testing of the core modules with mutmut, one module at a time; kill rates to BENCHMARKS.md.

    python benchmarks/mutation.py [--modules selection,evaluation] [--slow-tests] [--markdown BENCHMARKS.md]

Each module is mutated in a work directory of its own (`runs/mutation/<module>/`: a copy of
`src/`, `tests/`, `configs/`, `benchmarks/` and a pyproject.toml whose `[tool.mutmut]` names that module's
files and its fast unit tests), so each mutant is judged only by the tests meant for it, and no
mutation run loads SmolLM2 or starts vLLM (the tests listed use the tiny random model at most).
mutmut runs with one worker by default (`--workers`, mutmut's `--max-children`): the machine is
shared. Results are cached by mutmut in the work directory, so an interrupted run resumes;
mutmut keeps a verdict even when the tests change, so after new tests `--rerun-survivors`
judges the survivors again (and only them).

The verdicts also live in the repository, in `benchmarks/mutation-cache/` (mutmut's `.meta` files:
each mutant's exit code under the hash of the function it mutates; the slow tests' verdicts;
`results.json`, the table's figures; not mutmut's map of tests to functions, which a checkout
traces afresh in minutes): a run saves them as it ends (also
when interrupted; `--save-cache` snapshots a run still going), and a work directory that is missing,
as in a fresh clone, is restored from them. mutmut judges again only the mutants of functions whose
source changed since, so a run of hours can be spread over sessions that share nothing but git.

Tests that launch processes or start vLLM are too slow for every mutant, and mutmut cannot see
what a launched process calls: `--slow-tests` runs a module's `SLOW_TESTS` against the survivors
and no-test mutants of the functions they cover (less those already listed as equivalent or as
unkillable here), one mutant at a time, and counts those they kill.

Kill rate = killed / (mutants - equivalent), where killed counts mutants that made a test fail
or time out, and `equivalent` are the survivors listed, with the reason, in
`tests/mutation_equivalents.md` (lines `- ssr.module.x_function__mutmut_N: why`). Survivors that
are real bugs on a path this machine cannot run (GPU, DeepSpeed) stay counted as surviving; the
table lists them with the reason from `tests/mutation_unkillable_here.md`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from markdown_section import replace_section
from ssr.models.dtype import cpu_description

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "mutation"
CACHE = ROOT / "benchmarks" / "mutation-cache"
"""Committed: what a module's work directory must keep for a later session to resume (see the docstring)."""
SECTION = "## Mutation testing (`make mutation`)"

# module -> (files mutated, unit tests that judge them, mutant-name patterns or None for every
# function of the files). Smallest / pure logic first.
MODULES: dict[str, tuple[list[str], list[str], list[str] | None]] = {
    "selection": (["src/ssr/selection.py"], ["tests/test_selection.py"], None),
    "evaluation": (["src/ssr/evaluation.py"], ["tests/test_evaluation.py"], None),
    "synthesis": (["src/ssr/synthesis/parser.py", "src/ssr/synthesis/prompts.py", "src/ssr/synthesis/reuse.py"],
                  [f"tests/test_synthesis.py::{t}" for t in (  # its pure tests: none loads a model
                      "test_prompt_format_matches_the_release", "test_all_ordered_pairs_and_capping",
                      "test_parser_splits_several_instances", "test_parser_never_crashes_nor_invents_text")]
                  + [f"tests/test_open_domain.py::{t}" for t in (  # the open-domain prompt and parser, also pure
                      "test_open_domain_prompt_is_the_release_alpaca_prompt",
                      "test_open_domain_parser_keeps_exactly_one_input_and_one_output",
                      "test_an_instruction_written_alone_is_a_candidate_only_when_asked")]
                  + ["tests/test_synthesis_text.py",  # and reused samples, on the tiny model's generator
                     "tests/test_synthesis_reuse.py::test_the_key_is_a_sha256_of_a_canonical_form",
                     "tests/test_synthesis_reuse.py::test_samples_are_stored_and_read_back_only_under_the_same_key"], None),
    # SSR's synthesis pipeline: candidates from the ICL model's generations, their verdicts, the
    # selection (tests on the tiny model, seconds each), refinement and the rehearsal rows (whole
    # tiny SSR runs: the promise tests and the methods' own; open-domain synthesis: test_general)
    "pipeline": (["src/ssr/synthesis/pipeline.py"], [f"tests/test_{t}.py" for t in (
        "synthesis", "open_domain", "screen", "sampling_settings", "synthesis_text", "selection", "ssr_promises",
        "methods", "general")], None),
    # the sweep's and the report's statistics (not their plotting and file handling)
    "statistics": (["src/ssr/report.py", "src/ssr/sweep.py"], ["tests/test_summaries.py"],
                   ["ssr.sweep.x_summarize__*", "ssr.sweep.x_format_mean_std__*", "ssr.sweep.x_summary_table__*",
                    "ssr.report.x_seen_average__*", "ssr.report.x_run_label__*"]),
    "data": (["src/ssr/data/loaders.py", "src/ssr/data/subsets.py", "src/ssr/data/task.py"],
             ["tests/test_data.py", "tests/test_loader_errors.py"], None),
    "config": (["src/ssr/config.py"], ["tests/test_config.py", "tests/test_rundir.py", "tests/test_reliability.py"], None),
    "training": (["src/ssr/training.py"], ["tests/test_training.py"], None),
    # the methods and the runner are exercised through whole (tiny) runs: their in-process tests
    # (a subprocess's calls are invisible to mutmut), the methods' own first
    "methods": (["src/ssr/methods/*.py"], [f"tests/test_{t}.py" for t in (
        "methods", "runner", "regularizers", "ssr_method", "ssr_promises", "synthesis_reuse")], None),
    "runner": (["src/ssr/runner.py"], [f"tests/test_{t}.py" for t in (
        "runner", "rundir", "methods", "regularizers", "ssr_method", "ssr_promises", "general", "sweep", "reliability",
        "safety")], None),
}
# module -> (mutant-name pattern, tests) pairs: tests too slow to run against every mutant (they
# launch processes, whose calls mutmut cannot see, or start a vLLM engine; each costs a minute or
# more). `--slow-tests` runs them, one mutant at a time, against the survivors and the no-test
# mutants of the functions the pattern names (the first pattern that matches); a mutant they
# kill counts as killed.
TWO_PROCESSES = "tests/test_distributed.py::test_sequential_under_two_processes_is_the_one_process_run"
VLLM_MERGED = "tests/test_vllm.py::test_a_merged_engine_serves_a_chain_of_merged_adapters_as_hf_does"
VLLM_LORA = "tests/test_vllm_lora.py::test_a_lora_engine_applies_adapters_per_request_as_the_hf_backend_does"
SLOW_TESTS: dict[str, list[tuple[str, list[str]]]] = {
    # the loop's multi-process arithmetic: whose micro-batch a process runs, the zero-weight
    # stand-in of a short last step, the statistics gathered over the processes
    "training": [("ssr.training.x_train_stage__mutmut_*", [TWO_PROCESSES])],
    # generation shared by the processes of a launch; the merged weights a vLLM engine serves
    "runner": [("ssr.runner.xǁSplitGeneratorǁ*", [TWO_PROCESSES]), ("ssr.runner.x__plain__*", [TWO_PROCESSES]),
               ("ssr.runner.x__run__*", [TWO_PROCESSES]), ("ssr.runner.x_run__*", [TWO_PROCESSES]),
               ("ssr.runner.xǁRunContextǁgenerator_after__*", [TWO_PROCESSES]),
               # which stages vLLM serves, and how: in a merged engine and with adapters per request
               *((f"ssr.runner.xǁModelStateǁ{f}__*", [VLLM_MERGED, VLLM_LORA]) for f in ("_vllm_serves", "stage_generator")),
               ("ssr.runner.xǁModelStateǁ*", [VLLM_MERGED])],
}
SLOW_VERDICTS = "slow-verdicts.json"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.md"
UNKILLABLE_HERE = ROOT / "tests" / "mutation_unkillable_here.md"
MUTMUT = Path(sys.executable).with_name("mutmut")


def _listed(path: Path) -> dict[str, str]:
    """Mutant -> reason, from the lines `- <mutant name>: why` of `path`."""
    if not path.exists():
        return {}
    return dict(re.findall(r"^- `?([\w.]+__mutmut_\d+)`?: (.+)$", path.read_text(), flags=re.M))


def equivalents() -> dict[str, str]:
    """Survivors judged equivalent (the mutant computes the same thing), with the reason."""
    return _listed(EQUIVALENTS)


def unkillable_here() -> dict[str, str]:
    """Survivors that are real bugs no test can show on this machine (a GPU or DeepSpeed path),
    with the reason: still counted as surviving, only explained."""
    return _listed(UNKILLABLE_HERE)


def _cached_files(work: Path) -> list[Path]:
    """The files of a work directory that hold its verdicts, relative to it: mutmut's `.meta` per
    mutated source file and the slow tests' verdicts. Not mutmut's map of tests to functions
    (mutants/mutmut-stats.json): a checkout traces its tests afresh in a few minutes, and a stale map
    misleads (a `mutmut` command run outside this script's environment lists no tests and saves
    the map emptied, after which a resumed run would find no test for any mutant)."""
    # under mutants/src only (mutmut's source_paths): mutants/ also holds a copy of benchmarks/, this cache included
    found = [p.relative_to(work) for p in sorted((work / "mutants" / "src").rglob("*.py.meta"))]
    return found + [Path(SLOW_VERDICTS)] * (work / SLOW_VERDICTS).exists()


def save_cache(module: str) -> int:
    """Copy the module's verdicts from its work directory into CACHE/<module>/ (replacing what was
    there); the number of files saved. A file mutmut is writing at that moment is retried."""
    work, saved = WORK / module, CACHE / module
    files = _cached_files(work)
    if not files:
        return 0
    copies: dict[Path, str] = {}
    for name in files:
        for _ in range(5):
            text = (work / name).read_text()
            try:
                json.loads(text)
                break
            except json.JSONDecodeError:  # caught mid-write
                time.sleep(1)
        else:
            raise RuntimeError(f"{work / name} is not valid JSON; nothing saved for {module}")
        copies[name] = text
    shutil.rmtree(saved, ignore_errors=True)
    for name, text in copies.items():
        (saved / name).parent.mkdir(parents=True, exist_ok=True)
        (saved / name).write_text(text)
    return len(copies)


def restore_cache(module: str) -> int:
    """Lay the module's committed verdicts into a work directory that has none (a fresh clone);
    the number of files restored. mutmut then keeps each verdict whose function is unchanged."""
    work, saved = WORK / module, CACHE / module
    if (work / "mutants").exists() or not saved.is_dir():
        return 0
    files = [p.relative_to(saved) for p in sorted(saved.rglob("*")) if p.is_file()]
    for name in files:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(saved / name, work / name)
    return len(files)


def prepare(module: str) -> Path:
    """The module's work directory: src/, tests/ and a pyproject.toml configured for mutmut, with
    the committed verdicts restored if it had none."""
    files, tests, _ = MODULES[module]
    work = WORK / module
    work.mkdir(parents=True, exist_ok=True)
    restored = restore_cache(module)
    if restored:
        print(f"   {module}: {restored} verdict files restored from {CACHE.relative_to(ROOT)}/{module}", flush=True)
    for name in ("src", "tests", "configs", "benchmarks"):  # configs, benchmarks: tests load them
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (ROOT / "pyproject.toml").read_text()
    quoted = lambda items: "[" + ", ".join(json.dumps(i) for i in items) + "]"  # noqa: E731
    toml += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        'also_copy = ["configs", "benchmarks"]\n'
        f"only_mutate = {quoted(files)}\n"
        f"pytest_add_cli_args_test_selection = {quoted(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
        # mutmut's CPU-time limit is 2 x multiplier x (the tests' measured time + 1 s). At its
        # default (15) a worker that imports transformers afresh beside a busy machine ran out
        # of CPU time before its test ran, so mutants were counted as timeouts that no test had
        # judged; 60 leaves room for that, and a real endless loop is still stopped in minutes.
        "timeout_multiplier = 60.0\n"
        # torch is not fork-safe after it has run: workers fork from a clean server process
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
    )
    (work / "pyproject.toml").write_text(toml)
    return work


def _test_env(**extra: str) -> dict[str, str]:
    """The environment the tests of a work copy run in: offline, and pointed at the shared data
    (the work copy sits elsewhere than the repository, beside which the tests look for it)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra}
    shared = ROOT.parent / "shared" / "data"
    if "SSR_SHARED_DATA" not in env and (shared / "superni").is_dir():
        env["SSR_SHARED_DATA"] = str(shared)
    return env


def _function_hash(work: Path, mutant: str) -> str | None:
    """mutmut's hash of the function a mutant changes (a verdict holds while the function is unchanged)."""
    module, function = re.match(r"^(.*)\.(x[_ǁ].*)__mutmut_\d+$", mutant).groups()
    meta = work / "mutants" / "src" / (module.replace(".", "/") + ".py.meta")
    if not meta.exists():
        return None
    return json.loads(meta.read_text()).get("hash_by_function_name", {}).get(function)


def _slow_cache(work: Path) -> dict[str, dict]:
    path = work / SLOW_VERDICTS
    return json.loads(path.read_text()) if path.exists() else {}


def slow_verdicts(work: Path, cache: dict[str, dict] | None = None) -> dict[str, str]:
    """Survivors judged by the slow tests: mutant -> killed / timeout / survived, while the
    mutated function is the one judged (`cache`: the verdicts file, if already read)."""
    cache = _slow_cache(work) if cache is None else cache
    return {n: v["verdict"] for n, v in cache.items() if v["function_hash"] == _function_hash(work, n)}


def slow_tests_for(module: str, mutant: str) -> list[str]:
    """The slow tests that judge `mutant` (none: mutmut's verdict stands)."""
    return next((tests for pattern, tests in SLOW_TESTS.get(module, []) if fnmatch.fnmatch(mutant, pattern)), [])


def judge_with_slow_tests(module: str) -> int:
    """Run the module's slow tests against each survivor and no-test mutant they cover, through
    mutmut's own switch (its mutated code runs the mutant that MUTANT_UNDER_TEST names; launched
    processes inherit it). Unmutated first: the tests must pass. Verdicts are cached, so a rerun resumes."""
    work = WORK / module
    if not SLOW_TESTS.get(module):
        print(f"   {module}: no slow tests", flush=True)
        return 0
    if not (work / "mutants" / "src").is_dir():  # the mutated sources are mutmut's, not kept in the cache
        print(f"   {module}: no mutated sources here (none judged yet, or a fresh checkout): run `python "
              f"benchmarks/mutation.py --modules {module} --slow-tests`, which has mutmut write them again "
              "(judging only what its cache lacks)", flush=True)
        return 0
    path, cached = work / SLOW_VERDICTS, _slow_cache(work)
    env = _test_env(PYTHONPATH="src")  # the mutated copy under mutants/, imported directly

    def judge(mutant: str, tests: list[str], limit: float | None) -> tuple[str, float]:
        started = time.time()
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        try:
            done = subprocess.run(command, cwd=work / "mutants", env={**env, "MUTANT_UNDER_TEST": mutant},
                                  capture_output=True, text=True, timeout=limit, start_new_session=True)
        except subprocess.TimeoutExpired:
            return "timeout", time.time() - started
        return ("survived" if done.returncode == 0 else "killed"), time.time() - started

    baselines = {}
    for tests in {tuple(t) for _, t in SLOW_TESTS[module]}:
        verdict, baselines[tests] = judge("", list(tests), None)
        if verdict != "survived":
            print(f"   {module}: {', '.join(tests)} fail on the unmutated code; nothing judged", file=sys.stderr, flush=True)
            return 1
    no_tests = [n for n, s in statuses(work).items() if s == "no tests"]
    # not those already explained: equivalent, or killable only on a GPU / under DeepSpeed
    judged = {**slow_verdicts(work), **equivalents(), **unkillable_here()}
    pending = [n for n in tally(module, work)["survived"] + no_tests if slow_tests_for(module, n) and n not in judged]
    print(f"   {module}: {len(pending)} survivors and no-test mutants for the slow tests (unmutated: "
          + ", ".join(f"{round(b)} s" for b in baselines.values()) + ")", flush=True)
    try:
        for i, mutant in enumerate(pending, 1):
            tests = slow_tests_for(module, mutant)
            verdict, seconds = judge(mutant, tests, 10 * baselines[tuple(tests)] + 60)
            cached[mutant] = {"verdict": verdict, "function_hash": _function_hash(work, mutant), "seconds": round(seconds, 1)}
            path.write_text(json.dumps(cached, indent=1))
            print(f"   [{i}/{len(pending)}] {mutant}: {verdict} ({seconds:.0f} s)", flush=True)
    finally:
        save_cache(module)
    return 0


def statuses(work: Path) -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, no tests, ...), from `mutmut results`."""
    out = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    return dict(re.findall(r"^\s*([\w.]+__mutmut_\d+): ([\w ]+?)\s*$", out, flags=re.M))


def run_module(module: str, rerun_survivors: bool = False, workers: int = 1) -> dict:
    """mutmut over the module (resuming its cache); `rerun_survivors`: judge again, with the tests
    as they are now, only the mutants that survived (mutmut keeps a verdict until asked again)."""
    work = prepare(module)
    # one thread: an idle OpenMP thread spinning beside a busy machine burns the worker's CPU-time limit
    env = _test_env(PYTHONPATH="", OMP_NUM_THREADS="1")
    started, load_before = time.time(), os.getloadavg()
    nice = ["nice", "-n", str(15 - os.nice(0))] if os.nice(0) < 15 else []  # niceness 15 on the shared machine
    # the module's functions (mutmut, named nothing, judges only the mutants with no verdict yet)
    patterns = MODULES[module][2] or []
    if rerun_survivors:  # the survivors in scope, equivalents aside (tally's list), the mutants of
        # functions no selected test called (a new test may call them now), and those not judged yet.
        # mutmut maps tests to the functions they call once and then only maps new tests: a test
        # that changed since (e.g. one that was skipped then) would not be run against the
        # mutants it now reaches. Dropping the map makes mutmut trace every test afresh.
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        judged = tally(module, work)
        again = judged["survived"] + [f"{f}__mutmut_*" for f in judged["untested_functions"]] + judged["unjudged"]
        # Nothing to judge again: a module of whole files still runs, without names, which judges only
        # the mutants of functions changed since; a module of named functions does not (naming them
        # all would judge every one again), as before.
        run_first = bool(again) or not patterns
        patterns = again or patterns
    else:
        run_first = True

    def mutmut(names: list[str], log) -> int:
        return subprocess.run([*nice, str(MUTMUT), "run", "--max-children", str(workers), *names],
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode

    try:
        with open(work / "mutmut-run.log", "w") as log:  # written as it runs: `tail -f` shows mutmut's progress
            returncode = mutmut(patterns, log) if run_first else 0
            # mutmut writes the mutants of a function changed since the last run only as a run
            # starts, so they were in no list above: judge them now
            new = tally(module, work)["unjudged"] if rerun_survivors and returncode == 0 else []
            if new:
                returncode = mutmut(new, log)
    finally:  # also on Ctrl-C: what was judged so far goes to the committed cache
        save_cache(module)
    wall = time.time() - started
    return {**tally(module, work), "wall_min": round(wall / 60, 1), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "returncode": returncode,
            "workers": workers, "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}


def tally(module: str, work: Path) -> dict:
    """Counts of a module's mutants from mutmut's cache, with the equivalents file as it is now.

    `no tests`: mutants in functions that none of the module's selected tests calls (mutmut's
    first phase maps tests to functions); they are not killed, so they count against the kill
    rate, and are reported apart so that missing tests and weak tests can be told apart."""
    patterns = MODULES[module][2] or []
    status = {n: s for n, s in statuses(work).items() if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)}
    equivalent = equivalents()
    counts: dict[str, int] = {}
    for name, s in status.items():
        counts[s] = counts.get(s, 0) + 1
    not_run = {n for n, s in status.items() if s == "not checked"}  # an interrupted run: left for the next one
    status = {n: s for n, s in status.items() if n not in not_run}
    cache = _slow_cache(work)
    slow = {n for n, v in slow_verdicts(work, cache).items() if v in ("killed", "timeout") and status.get(n) in ("survived", "no tests")}
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + len(slow)
    survivors = sorted(n for n, s in status.items() if s not in ("killed", "timeout") and n not in slow)
    equiv = [n for n in survivors if n in equivalent]
    no_tests = sorted(n for n, s in status.items() if s == "no tests" and n not in slow)
    judged = len(status) - len(equiv)
    reached = judged - len(no_tests)
    return {
        "module": module, "files": MODULES[module][0], "tests": MODULES[module][1], "functions": patterns,
        "mutants": len(status), "killed": killed, "timeouts": counts.get("timeout", 0), "killed_by_slow_tests": len(slow),
        "slow_tests": sorted({t for _, tests in SLOW_TESTS.get(module, []) for t in tests}), "equivalent": len(equiv),
        "slow_tests_min": round(sum(v.get("seconds", 0) for v in cache.values()) / 60, 1),
        "survived": [n for n in survivors if n not in equivalent and n not in no_tests],
        "no_tests": len(no_tests), "untested_functions": sorted({n.split("__mutmut_")[0] for n in no_tests}),
        "counts": counts, "not_run": len(not_run), "unjudged": sorted(not_run),
        "kill_rate": round(100 * killed / judged, 1) if judged else None,
        "kill_rate_reached": round(100 * killed / reached, 1) if reached else None,
    }


def markdown(results: list[dict], command: str, note: str = "") -> str:
    lines = [
        SECTION, "",
        f"Measured on {cpu_description()} ({os.cpu_count()} cores), mutmut {_mutmut_version()}, each module against "
        f"its own unit tests only. Command: `{command}`.{note}",
        "Kill rate = killed (a test failed or timed out) / (mutants − equivalent); equivalent survivors are listed with "
        "the reason in `tests/mutation_equivalents.md`. *No test*: mutants in functions none of the module's selected "
        "tests calls (counted as not killed); *reached*: the kill rate over the others. Target: ≥ 85 % per core module.", "",
        "| module | files | tests | mutants | killed (of which timeouts) | equivalent | no test | surviving | kill rate | reached | finished (UTC) | wall time (all sittings) | load avg (before → after) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        files = ", ".join(f.removeprefix("src/ssr/") for f in r["files"])
        if r.get("functions"):
            files += " (" + ", ".join(p.split(".x_")[-1].rstrip("_*") for p in r["functions"]) + ")"
        per_file: dict[str, int] = {}  # whole files, or "file (n tests)" for tests picked by name
        for t in r["tests"]:
            name = t.removeprefix("tests/").split("::")[0]
            per_file[name] = per_file.get(name, 0) + ("::" in t)
        tests = ", ".join(f"{f} ({n} tests)" if n else f for f, n in per_file.items())
        workers = r.get("workers", 1)
        workers = "–".join(map(str, workers)) if isinstance(workers, list) else str(workers)  # over the sittings
        rate = "–" if r["kill_rate"] is None else f"{r['kill_rate']:.1f} %"
        reached = "–" if r.get("kill_rate_reached") is None else f"{r['kill_rate_reached']:.1f} %"
        if r.get("killed_by_slow_tests"):
            tests += "; survivors and no-test mutants also against " + ", ".join(t.removeprefix("tests/") for t in r["slow_tests"])
        killed = f"{r['killed']} ({r.get('timeouts', '?')}" + (f"; {r['killed_by_slow_tests']} by the slow tests)"
                                                                if r.get("killed_by_slow_tests") else ")")
        lines.append(f"| {r['module']} | {files} | {tests} | {r['mutants']} | {killed} | {r['equivalent']} | "
                     f"{r.get('no_tests', '–')} | {len(r['survived'])} | {rate} | {reached} | {r.get('finished', '–')} | "
                     f"{r['wall_min']} min, {workers} worker{'' if workers == '1' else 's'}"
                     + (f", then {r['slow_tests_min']} min of slow tests" if r.get("slow_tests_min") else "")
                     + f" | {r['load_before'][0]} → {r['load_after'][0]} |")
    recorded = [r["module"] for r in results if r.get("recorded")]
    if recorded:
        lines += ["", f"Rows of {', '.join(recorded)}: as measured then. Their verdicts predate `{CACHE.relative_to(ROOT)}/` and "
                      "were lost with an uncommitted work directory, so `--tally-only` keeps these rows as recorded; a new run "
                      "of the module replaces its row."]
    not_run = [m for m in MODULES if m not in {r["module"] for r in results}]
    if not_run:
        lines += ["", "Not yet run: " + ", ".join(f"{m} ({', '.join(f.removeprefix('src/ssr/') for f in MODULES[m][0])})"
                                                  for m in not_run) + "."]
    untested = [(r["module"], f) for r in results for f in r.get("untested_functions", [])]
    if untested:
        lines += ["", "Functions no selected test reaches (their mutants are the *no test* column; tested elsewhere by "
                      "slower end-to-end tests, which the per-module runs leave out): "
                  + ", ".join(f"`{f.split('.x_')[-1]}` ({m})" for m, f in untested) + "."]
    survivors = [n for r in results for n in r["survived"]]
    explained = unkillable_here()
    if survivors:
        lines += ["", "Surviving, not yet killed nor judged equivalent (a reason where no test can kill it on this machine, "
                      "from `tests/mutation_unkillable_here.md`):", ""]
        lines += [f"- `{n}`" + (f": {explained[n]}" if n in explained else "") for n in survivors]
    return "\n".join(lines) + "\n"


def _mutmut_version() -> str:
    out = subprocess.run([str(MUTMUT), "--version"], capture_output=True, text=True).stdout
    return out.strip().split()[-1] if out.strip() else "?"


def recount(modules: list[str], previous: dict, json_path: Path) -> None:
    """`--tally-only`: refresh the counts of modules already run from mutmut's cache (nothing rerun)."""
    for module in modules:
        work = WORK / module
        if not (work / "mutants").exists():  # a fresh checkout: the committed verdicts, and mutmut's config to read them
            prepare(module)
        if module in previous and not (work / "mutants").exists():  # figures recorded before the cache was kept
            print(f"   {module}: no verdicts here nor in {CACHE.relative_to(ROOT)}; its figures stay as recorded", flush=True)
        elif module in previous:
            previous[module].update(tally(module, work))
            if "finished" not in previous[module] and (work / "mutmut-run.log").exists():  # runs from before the field
                finished = datetime.fromtimestamp((work / "mutmut-run.log").stat().st_mtime, timezone.utc)
                previous[module]["finished"] = finished.strftime("%Y-%m-%d %H:%M")
    json_path.write_text(json.dumps(previous, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default=",".join(MODULES), help=f"comma-separated, of {', '.join(MODULES)}")
    parser.add_argument("--markdown", type=Path, help="write the kill rates into this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, default=CACHE / "results.json",
                        help="the modules' figures, read and updated (default: the committed cache's)")
    parser.add_argument("--save-cache", action="store_true",
                        help="run nothing: copy the modules' verdicts so far (e.g. of a run still going) into "
                             f"{CACHE.relative_to(ROOT)}/, to commit")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="judge the surviving mutants again (e.g. after new tests), nothing else")
    parser.add_argument("--tally-only", action="store_true",
                        help="run nothing: recount the modules already run (e.g. after new tests or equivalents)")
    parser.add_argument("--slow-tests", action="store_true",
                        help="after the mutmut run (or alone with --tally-only), run each module's slow tests "
                             "(SLOW_TESTS) against the survivors and no-test mutants they cover, one at a time")
    parser.add_argument("--workers", type=int, default=1,
                        help="mutants judged at once (mutmut's --max-children); 1 leaves the machine to other work")
    args = parser.parse_args(argv)
    modules = [m for m in args.modules.split(",") if m]
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {list(MODULES)}")
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    failed: list[str] = []
    if args.save_cache:
        for module in modules:
            print(f"   {module}: {save_cache(module)} verdict files saved to {CACHE.relative_to(ROOT)}/{module}")
        return 0
    if args.tally_only:
        if args.slow_tests:
            failed += [m for m in modules if judge_with_slow_tests(m)]
        recount(modules, previous, args.json)
    else:
        for module in modules:
            print(f"== mutating {module}: {', '.join(MODULES[module][0])}", flush=True)
            # the wall time of earlier sittings counts too, whether their verdicts are here or in the cache
            resumed = ((WORK / module / "mutants").exists() or (CACHE / module).is_dir()) and module in previous
            result = run_module(module, rerun_survivors=args.rerun_survivors, workers=args.workers)
            if result["returncode"] != 0:  # e.g. a test failing on the unmutated code: no verdict to record
                print(f"   mutmut failed (exit {result['returncode']}); nothing recorded: see "
                      f"{WORK / module / 'mutmut-run.log'}", file=sys.stderr, flush=True)
                failed.append(module)
                continue
            if args.slow_tests and judge_with_slow_tests(module):
                failed.append(module)
            result.update(tally(module, WORK / module))
            if resumed:  # mutmut reran only what its cache lacked: the wall time is that of every sitting
                result["wall_min"] = round(previous[module]["wall_min"] + result["wall_min"], 1)
                before = previous[module].get("workers", 1)  # 1 for sittings from before the option
                used = sorted({*(before if isinstance(before, list) else [before]), args.workers})
                result["workers"] = used if len(used) > 1 else used[0]
            # reread: another module's run may have written the file since this one started
            previous = json.loads(args.json.read_text()) if args.json.exists() else {}
            previous[module] = result
            print(f"   {result['mutants']} mutants, {result['killed']} killed, {result['equivalent']} equivalent, "
                  f"{len(result['survived'])} surviving: kill rate {result['kill_rate']} % ({result['wall_min']} min)",
                  flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(previous, indent=2))
    if args.markdown:
        done = [previous[m] for m in MODULES if m in previous]
        command = "nice -n 15 python benchmarks/mutation.py " + " ".join(sys.argv[1:] if argv is None else argv)
        note = " Counts recomputed from mutmut's cache with `--tally-only` (nothing rerun)." if args.tally_only else ""
        replace_section(args.markdown, SECTION, markdown(done, command.strip(), note))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
