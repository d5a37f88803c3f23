"""Bad input is a one-line error with exit code 2 before any model loads, and leaves no trace.

Each case is one class of failure found by trying the CLI as a new user would (issue 13):
the expected message names the file, line and field, written here by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import ssr.runner
from conftest import tiny_config, write_jsonl, make_task_rows
from ssr.cli import main
from ssr.config import load_config, to_dict
from ssr.errors import RunDirError
from ssr.runner import RunDir
from test_fuzz import hang_guard


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Every refusal here must come before a model loads."""
    monkeypatch.setattr(ssr.runner, "load_base_model", lambda *a, **k: pytest.fail("a model was loaded"))


def _write_config(tmp_path: Path, cfg: dict | str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return path


def _refused(capsys, argv: list[str], pattern: str, lines: int = 1) -> str:
    """Run the CLI; it must exit 2 with `lines` `error:` lines, the first matching `pattern`."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == lines and all(e.startswith("error: ") for e in err.splitlines()), err
    assert re.search(pattern, err), err
    return err


def _run_refused(capsys, tmp_path, cfg, pattern, lines: int = 1):
    config = cfg if isinstance(cfg, Path) else _write_config(tmp_path, cfg)
    _refused(capsys, ["run", str(config), "-o", str(tmp_path / "out")], pattern, lines)
    assert not (tmp_path / "out").exists(), "a refused run must not create or claim its directory"


def _lines_config(task_dir, model_dir, method="sequential", **opts) -> str:
    """The tiny config as YAML text, one key per line (so tests can name line numbers)."""
    return yaml.safe_dump(tiny_config(task_dir, model_dir, method, **opts), sort_keys=False, default_flow_style=False)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- config files -------------------------------------------------------------------------

def test_binary_config_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"seed: 1\n\x89PNG\x00\xff\xfe\n")
    _run_refused(capsys, tmp_path, path, r"cfg.yaml:2: not UTF-8 text")


def test_directory_as_config(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    _run_refused(capsys, tmp_path, tmp_path / "adir", r"adir: is a directory, expected a YAML file")


def test_duplicate_key_names_both_lines(tmp_path, capsys, task_dir, tiny_model_dir):
    text = _lines_config(task_dir, tiny_model_dir).replace("  lr: 0.001\n", "  lr: 0.001\n  lr: 0.5\n")
    second = _line_of(text, "lr: 0.5")
    _run_refused(capsys, tmp_path, text, rf"cfg.yaml:{second}: not valid YAML: duplicate key 'lr' \(first given on line {second - 1}\)")


@pytest.mark.parametrize("value, message", [
    (".inf", "finite number"),
    ("yes", "valid number"),  # YAML 1.1 reads `yes` as true: no longer 1.0 epochs
    ("'2'", "valid number"),
])
def test_epochs_must_be_a_finite_number(tmp_path, capsys, task_dir, tiny_model_dir, value, message):
    text = _lines_config(task_dir, tiny_model_dir).replace("epochs: 1\n", f"epochs: {value}\n")
    _run_refused(capsys, tmp_path, text, rf"cfg.yaml:{_line_of(text, 'epochs:')}: field 'train.epochs': .*{message}")


def test_alias_bomb_is_refused_not_a_hang(tmp_path, capsys):
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    config = _write_config(tmp_path, "l0: &l0 [x]\n" + levels + "tasks: *l9\n")
    with hang_guard(60):
        _run_refused(capsys, tmp_path, config, r"cfg.yaml: more than 100000 values once its YAML aliases are expanded")


def test_integers_stay_integers_and_exponents_are_floats(tmp_path, task_dir, tiny_model_dir):
    text = _lines_config(task_dir, tiny_model_dir).replace("lr: 0.001", "lr: 1e-3")
    assert load_config(_write_config(tmp_path, text)).train.lr == 0.001  # YAML 1.1 would give the string '1e-3'
    with pytest.raises(Exception, match=r"field 'train.batch_size'"):
        load_config(_write_config(tmp_path, text.replace("batch_size: 4\n  grad", "batch_size: 2.5\n  grad")))


def test_negative_seed(tmp_path, capsys, task_dir, tiny_model_dir):
    cfg = tiny_config(task_dir, tiny_model_dir, "replay", selection="random")
    cfg["seed"] = -3
    _run_refused(capsys, tmp_path, cfg, r"cfg.yaml:1: field 'seed': .*greater than or equal to 0")


def test_long_or_unsafe_task_names(tmp_path, capsys, task_dir, tiny_model_dir):
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["tasks"][1]["name"] = "x" * 300
    _run_refused(capsys, tmp_path, cfg, r"field 'tasks.1.name': .*at most 100 bytes, got 300")
    cfg["tasks"][1]["name"] = "../escape"
    _run_refused(capsys, tmp_path, cfg, r"field 'tasks.1.name': a task name is used in file names")


def test_empty_definition_and_model_name(tmp_path, capsys, task_dir, tiny_model_dir):
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["tasks"][0]["definition"] = ""
    _run_refused(capsys, tmp_path, cfg, r"field 'tasks.0.definition'")
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["model"]["name"] = ""
    _run_refused(capsys, tmp_path, cfg, r"cfg.yaml:3: field 'model.name': .*at least 1 character")


def test_empty_directory_as_model(tmp_path, capsys, task_dir, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["model"]["name"] = str(tmp_path / "empty")
    _run_refused(capsys, tmp_path, cfg, r"cfg.yaml:3: field 'model.name': .*empty is a directory without config.json")


def test_bad_override_value(tmp_path, capsys, task_dir, tiny_model_dir):
    config = _write_config(tmp_path, tiny_config(task_dir, tiny_model_dir))
    _refused(capsys, ["run", str(config), "-o", str(tmp_path / "out"), "--set", "train.lr=[1"], r"--set train.lr: not a valid YAML value")
    _refused(capsys, ["run", str(config), "-o", str(tmp_path / "out"), "--set", "train.epochs=.nan"],
             r"--set: field 'train.epochs': .*finite number")


# --- the plan -----------------------------------------------------------------------------

def test_eval_only_task_is_refused_not_a_hang(tmp_path, capsys, task_dir, tiny_model_dir):
    cfg = tiny_config(task_dir, tiny_model_dir)
    del cfg["tasks"][1]["train"]
    _run_refused(capsys, tmp_path, cfg, r"field 'tasks.1.train': stage 2-upper of sequential trains on task 'upper', which has no training rows")


def test_too_few_demos_for_ssr(tmp_path, capsys, task_dir, tiny_model_dir):
    write_jsonl(tmp_path / "one.demos.jsonl", make_task_rows("reverse", 1, seed=5))
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random")
    cfg["tasks"][0]["demos"] = str(tmp_path / "one.demos.jsonl")
    _run_refused(capsys, tmp_path, cfg, r"field 'tasks.0.demos': task 'reverse' has 1 demonstrations .*n_shots = 2")
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random", n_shots=7)  # demos files hold 6
    # every task that gets a synthetic set (not the last): one line each
    _run_refused(capsys, tmp_path, cfg, r"field 'tasks.0.demos': task 'reverse' has 6 demonstrations .*n_shots = 7", lines=2)


def test_demos_override_checked_before_stage_one(tmp_path, capsys, task_dir, tiny_model_dir):
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random", demos_override={"reverse": "missing.jsonl"})
    _run_refused(capsys, tmp_path, cfg, r"missing.jsonl: file not found \(method.demos_override of task 'reverse'\)")
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random", demos_override={"revrse": "reverse.demos.jsonl"})
    _run_refused(capsys, tmp_path, cfg, r"demos_override names tasks not in the config: \['revrse'\]")


# --- data files ---------------------------------------------------------------------------

def test_json_holding_jsonl_gets_a_hint(tmp_path, capsys, task_dir, tiny_model_dir):
    write_jsonl(tmp_path / "rows.json", make_task_rows("reverse", 3, seed=1))
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["tasks"][0]["train"] = str(tmp_path / "rows.json")
    _run_refused(capsys, tmp_path, cfg, r"rows.json:2: not valid JSON \(Extra data\); the .json extension selects")


def test_directory_as_train_file(tmp_path, capsys, task_dir, tiny_model_dir):
    (tmp_path / "data").mkdir()
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["tasks"][0]["train"] = str(tmp_path / "data")
    _run_refused(capsys, tmp_path, cfg, r"data: is a directory, expected a data file")


def test_non_utf8_data_names_the_line(tmp_path, capsys, task_dir, tiny_model_dir):
    rows = (task_dir / "reverse.train.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "bad.jsonl").write_bytes(b"".join(rows[:3]) + b'{"input": "caf\xe9"}\n')
    cfg = tiny_config(task_dir, tiny_model_dir)
    cfg["tasks"][0]["train"] = str(tmp_path / "bad.jsonl")
    _run_refused(capsys, tmp_path, cfg, r"bad.jsonl:4: not UTF-8 text \(byte 0xe9 at column 15\)")


# --- the output directory -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "under-file", "uncreatable", "empty"])
def test_unusable_output_directory(tmp_path, capsys, task_dir, tiny_model_dir, kind):
    config = _write_config(tmp_path, tiny_config(task_dir, tiny_model_dir))
    (tmp_path / "a-file").write_text("x")
    out, pattern = {
        "file": (tmp_path / "a-file", r"a-file: is a file; a run directory is needed"),
        "under-file": (tmp_path / "a-file" / "run", r"lies under the file .*a-file"),
        "uncreatable": (Path("/proc/1/ssr-run"), r"/proc/1/ssr-run: cannot be created"),
        "empty": ("", r"--output-dir is empty"),
    }[kind]
    _refused(capsys, ["run", str(config), "-o", str(out)], pattern)
    assert (tmp_path / "a-file").read_text() == "x"


def test_corrupt_saved_config(tmp_path, task_dir, tiny_model_dir):
    cfg = load_config(None, raw=tiny_config(task_dir, tiny_model_dir))
    out = tmp_path / "run"
    (out / "stages" / "0-base" / "predictions").mkdir(parents=True)
    (out / "config.yaml").write_bytes(b"\xff\xfe garbage: [")
    RunDir(out).claim(cfg)  # nothing finished yet: the broken file is simply replaced
    assert to_dict(load_config(out / "config.yaml")) == to_dict(cfg)
    (out / "stages" / "0-base" / "predictions" / "reverse.jsonl").write_text("{}\n")
    (out / "config.yaml").write_text("[1, 2")
    with pytest.raises(RunDirError, match=r"config.yaml: not a readable run config, yet the directory holds finished steps"):
        RunDir(out).claim(cfg)


def test_a_run_that_finished_no_step_does_not_lock_its_directory(tmp_path, task_dir, tiny_model_dir):
    first = load_config(None, raw=tiny_config(task_dir, tiny_model_dir))
    fixed = load_config(None, raw={**tiny_config(task_dir, tiny_model_dir), "seed": 8})
    out = tmp_path / "run"
    RunDir(out).claim(first)
    (out / "stages").mkdir()  # started, finished nothing
    RunDir(out).claim(fixed)
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 8
    (out / "stages" / "0-base").mkdir()
    (out / "stages" / "0-base" / "x.jsonl").write_text("{}\n")  # one finished step: now it is refused
    with pytest.raises(RunDirError, match=r"different config.*seed: 8 -> 7"):
        RunDir(out).claim(first)


# --- the dry run --------------------------------------------------------------------------

def test_validate_is_a_dry_run_that_says_what_would_run(tmp_path, capsys, task_dir, tiny_model_dir):
    config = _write_config(tmp_path, tiny_config(task_dir, tiny_model_dir, "replay", selection="random"))
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    # 24 training rows per toy task; replay keeps round(0.1 x 24) = 2 of each finished task.
    assert "#   stage 1-reverse: train on 24 rows (reverse/new 24); evaluate reverse, upper, count" in out
    assert "#   stage 2-upper: train on 26 rows (upper/new 24, reverse/replay 2); evaluate reverse, upper, count" in out
    assert "#   stage 3-count: train on 28 rows (count/new 24, reverse/replay 2, upper/replay 2)" in out
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random", n_shots=7)
    _refused(capsys, ["validate", str(_write_config(tmp_path, cfg))], r"field 'tasks.0.demos'", lines=2)


OWNER = """
import subprocess, sys, time
from pathlib import Path
import psutil
from ssr.engines.vllm import register_engine_processes
# as vLLM starts its engine core: a child process that lives until told to stop
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
register_engine_processes([psutil.Process(child.pid)], Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_runs_engine_processes_are_stopped_by_the_next_run_and_a_live_runs_are_not(tmp_path):
    """vLLM's engine core outlives a SIGKILLed (or OOM-killed) parent and holds its memory; the
    next engine start stops it. An engine whose owner still runs is left alone."""
    import subprocess
    import sys

    from ssr.engines.vllm import reap_orphaned_engines

    registry = tmp_path / "engines"
    owners = [subprocess.Popen([sys.executable, "-c", OWNER, str(registry)], stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    dead_owner, live_owner = owners
    orphan, kept = (int(o.stdout.readline()) for o in owners)
    try:
        dead_owner.kill()
        dead_owner.wait()
        assert not _gone(orphan)  # the engine survived its owner
        assert reap_orphaned_engines(registry) == 1
        assert _gone(orphan) and not _gone(kept)
        assert sorted(p.name for p in registry.iterdir()) == [f"{live_owner.pid}.json"]
        assert reap_orphaned_engines(registry) == 0  # nothing left to stop
    finally:
        import psutil

        for pid in (orphan, kept):
            if not _gone(pid):
                psutil.Process(pid).kill()
        live_owner.kill()
        live_owner.wait()
