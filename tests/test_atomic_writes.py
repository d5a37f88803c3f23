"""Atomic writes: a process killed (SIGKILL) at any moment of a write leaves either the old or
the new file, never a mixture or a truncated one; an interrupted adapter save leaves no
adapter directory (its presence marks a finished stage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssr.io import atomic_path, write_json, write_jsonl, write_text

SRC = Path(__file__).resolve().parents[1] / "src"

# The child rewrites one file with two large contents by turns, forever, through `kind`.
WRITER = """
import sys
from ssr.io import write_json, write_jsonl, write_text
path, kind = sys.argv[1], sys.argv[2]
big = [{"k": i, "v": "x" * 200} for i in range(3000)]
contents = [big, [{"k": -i, "v": "y" * 200} for i in range(3000)]]
print("ready", flush=True)
n = 0
while True:
    rows = contents[n % 2]
    if kind == "text":
        write_text(path, "".join(r["v"] + "\\n" for r in rows))
    elif kind == "json":
        write_json(path, rows)
    else:
        write_jsonl(path, rows)
    n += 1
"""


def _contents(kind: str) -> set[str]:
    """The two whole files the writer alternates between, written here by the same functions."""
    import tempfile

    out = set()
    with tempfile.TemporaryDirectory() as d:
        for sign, ch in ((1, "x"), (-1, "y")):
            rows = [{"k": sign * i, "v": ch * 200} for i in range(3000)]
            p = Path(d) / "f"
            {"text": lambda: write_text(p, "".join(r["v"] + "\n" for r in rows)),
             "json": lambda: write_json(p, rows), "jsonl": lambda: write_jsonl(p, rows)}[kind]()
            out.add(p.read_text(encoding="utf-8"))
    return out


@pytest.mark.parametrize("kind", ["text", "json", "jsonl"])
def test_a_kill_during_a_write_leaves_the_old_or_the_new_file(tmp_path, kind):
    target = tmp_path / "out.txt"
    whole = _contents(kind)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:  # at least one write finished
            time.sleep(0.005)
        time.sleep(0.003 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert target.read_text(encoding="utf-8") in whole
        for tmp in tmp_path.glob(".out.txt.*"):  # what the killed write left: never the target
            tmp.unlink()


def test_an_exception_during_a_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.json"
    write_json(target, {"old": 1})
    with pytest.raises(TypeError):
        write_jsonl(target, [{"fine": 1}, {"bad": object()}])
    assert target.read_text() == '{\n  "old": 1\n}\n' and os.listdir(tmp_path) == ["f.json"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "adapter", is_dir=True) as tmp:
            (tmp / "adapter_config.json").write_text("{}")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["f.json"]


def test_an_interrupted_adapter_save_leaves_no_adapter(tmp_path, tiny_model_dir):
    """save_adapter writes into a temporary directory: interrupted after PEFT wrote the config
    and the weights, the stage's `adapter/` must not exist (it would mark the stage done)."""
    from ssr.config import LoraSettings
    from ssr.models import load_base_model
    from ssr.models.lora import attach_lora, save_adapter

    model = attach_lora(load_base_model(str(tiny_model_dir)), LoraSettings(r=2, alpha=4, dropout=0.0), seed=0)
    real_save = model.save_pretrained

    def save_then_die(path, **kwargs):
        real_save(path, **kwargs)
        assert (Path(path) / "adapter_model.safetensors").exists()
        raise KeyboardInterrupt("killed after the weights were written")

    model.save_pretrained = save_then_die
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, tmp_path / "stage" / "adapter")
    assert list((tmp_path / "stage").iterdir()) == []
    model.save_pretrained = real_save
    save_adapter(model, tmp_path / "stage" / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "stage" / "adapter").iterdir()}
