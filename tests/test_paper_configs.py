"""configs/paper: the paper's settings, orders and the release's file names, all valid."""

import json
from pathlib import Path

import pytest

from ssr.cli import main
from ssr.config import load_config, to_dict
from ssr.data import load_task

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
ORDERS = {  # the paper (and ../shared/data/superni/README.md)
    "order1": ["qa", "qg", "sa", "sum", "trans"],
    "order2": ["trans", "sa", "qa", "sum", "qg"],
    "order3": ["sum", "qg", "trans", "qa", "sa"],
    "10tasks": ["qa", "qg", "sa", "sum", "trans", "dsg", "expl", "para", "pe", "pos"],
}
TEMPLATES = {"llama2-7b": "vanilla", "llama2-7b-chat": "llama2", "alpaca-7b": "alpaca"}
CONFIGS = sorted(PAPER.glob("*.yaml"))


@pytest.fixture(scope="module")
def release_split(tmp_path_factory) -> Path:
    """A folder with the release's file names (JSON lines named .json), two rows each."""
    d = tmp_path_factory.mktemp("split")
    for task in ORDERS["10tasks"]:
        rows = [{"id": f"{task}-{i}", "input": f"input {i}", "output": f"output {i}",
                 "full_prompt": f"Definition of {task}.\n\ninput {i}", "task_name": task} for i in range(2)]
        for name in (f"{task}.train.json", f"{task}.eval.json", f"{task}.train.smp001.json"):
            (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_every_model_has_every_order():
    assert {p.name for p in CONFIGS} == {f"{m}.{o}.yaml" for m in TEMPLATES for o in ORDERS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_validates_and_loads(path, release_split, capsys):
    assert main(["validate", str(path), "--set", f"data.dir={release_split}"]) == 0
    assert str(release_split) in capsys.readouterr().out
    cfg = load_config(path, [f"data.dir={release_split}"])
    model, order = path.stem.split(".")
    assert [t.name for t in cfg.tasks] == ORDERS[order]
    assert cfg.model.template == TEMPLATES[model]
    tr = cfg.train
    assert (tr.lora.r, tr.lora.alpha, tr.lora.dropout, tr.lora.targets) == (8, 32, 0.1, ["q_proj", "v_proj"])
    assert (tr.lr, tr.batch_size * tr.grad_accum, tr.epochs, tr.scheduler, tr.warmup_ratio) == (2e-4, 32, 3, "cosine", 0)
    assert (tr.max_source_length, tr.max_target_length, cfg.eval.max_new_tokens) == (1024, 512, 512)
    assert (cfg.eval.scorer, cfg.eval.max_examples, cfg.data.max_train_examples) == ("release", None, None)
    m = cfg.method
    assert (m.n_demos, m.n_shots, m.samples_per_prompt, m.top_p, m.temperature, m.repetition_penalty) == (20, 2, 3, 0.6, 0.9, 1.2)
    assert (m.synth_max_length, m.synth_max_new_tokens, m.n_clusters, m.embedding_pooling) == (2048, None, 20, "pooler")
    # the release's .json files are JSON lines: they load as SuperNI rows
    task = load_task(cfg.tasks[0], cfg.data, m.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.seed)
    assert len(task.train) == len(task.eval) == len(task.demos) == 2


def test_one_model_has_the_same_settings_in_every_order(release_split):
    for model in TEMPLATES:
        settings = []
        for order in ORDERS:
            raw = to_dict(load_config(PAPER / f"{model}.{order}.yaml", [f"data.dir={release_split}"]))
            raw.pop("tasks")
            settings.append(raw)
        assert all(s == settings[0] for s in settings), model
