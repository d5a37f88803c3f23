import math

import pytest
import torch

from ssr.config import LoraSettings, TrainConfig
from ssr.methods.regularizers import QuadraticPenalty
from ssr.models import get_template, load_base_model, load_tokenizer
from ssr.models.lora import attach_lora
from ssr.training import IGNORE_INDEX, causal_lm_loss, collate, length_grouped_batches, supports_sparse_logits, tokenize_rows, train_stage

ROWS = [{"definition": "Write the input in upper case.", "input": w, "output": w.upper()}
        for w in "apple river stone cloud green quick seven table".split()]


def _model(tiny_model_dir, seed=0, dropout=0.0):
    return attach_lora(load_base_model(str(tiny_model_dir)), LoraSettings(r=4, alpha=8, dropout=dropout), seed)


def test_loss_only_on_response_with_eos(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    (ids, labels), = tokenize_rows(ROWS[:1], template, 64, 16)
    prompt = template.prompt_ids(ROWS[0]["definition"], ROWS[0]["input"])
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id
    # the response is the output's own tokens after a space (the raw prompt ends in "Output:"), then EOS
    assert ids[len(prompt):] == tok(" " + ROWS[0]["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    (ids, labels), = tokenize_rows(ROWS[:1], template, 5, 2)
    assert len(ids) == 5 + 2 and ids[-1] == tok.eos_token_id  # truncation keeps the prompt's end and the EOS


def test_length_grouped_batches_cover_every_row_once():
    batches = length_grouped_batches([5, 1, 9, 3, 3, 7, 2], 3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(7))


def test_training_lowers_loss_and_is_deterministic(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    cfg = TrainConfig(epochs=4, lr=5e-3, batch_size=4, grad_accum=1, max_source_length=64, max_target_length=16)
    results = []
    for _ in range(2):
        model = _model(tiny_model_dir)
        stats = train_stage(model, template, ROWS, cfg, seed=3)
        weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        results.append((stats, weights))
    (s1, w1), (s2, w2) = results
    assert s1["steps"] == 8 and s1["final_loss"] == s2["final_loss"]
    assert "final_penalty" not in s1  # reported only for a stage with a penalty
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    model = _model(tiny_model_dir)
    batch = _on_device(collate(tokenize_rows(ROWS, template, 64, 16), tok.pad_token_id), model)
    with torch.no_grad():
        before = model(**batch).loss.item()
    train_stage(model, template, ROWS, cfg, seed=3)
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before


def _on_device(batch: dict, model) -> dict:
    device = next(model.parameters()).device  # the model sits on the GPU where there is one
    return {k: v.to(device) for k, v in batch.items()}


def test_sparse_logits_loss_equals_the_plain_loss(tiny_model_dir):
    """The loss over the positions that predict a response token equals transformers' own loss
    over the whole sequence, on rows whose responses start and end at different positions."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = _model(tiny_model_dir)
    assert supports_sparse_logits(model)  # the tiny Llama, as SmolLM2, takes logits_to_keep
    assert supports_sparse_logits(load_base_model(str(tiny_model_dir)))  # also without an adapter
    batch = _on_device(collate(tokenize_rows(ROWS, get_template("raw", tok), 64, 16), tok.pad_token_id), model)
    starts = {int((row != -100).nonzero()[0]) for row in batch["labels"]}
    assert len(starts) > 1  # responses at different places: the union of positions is exercised
    # the vocabulary projection sees only the positions that predict a response token in some row
    labels = batch["labels"].tolist()
    wanted = {p for row in labels for p in range(len(row) - 1) if row[p + 1] != IGNORE_INDEX}
    assert len(wanted) < len(labels[0]) - 1  # some positions are left out
    widths = []
    model.get_base_model().lm_head.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
    with torch.no_grad():
        plain = model(**batch).loss
        assert torch.allclose(causal_lm_loss(model, batch, True), plain, atol=1e-5)
    assert widths == [len(labels[0]), len(wanted)]
    # and the gradients of the adapter are those of the plain loss
    grads = {}
    for sparse in (True, False):
        model.zero_grad()
        causal_lm_loss(model, batch, sparse).backward()
        grads[sparse] = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[True], grads[False]))


def test_bf16_autocast_training_follows_the_fp32_reference(tiny_model_dir, monkeypatch):
    """`train.bf16` on: the same stage's loss curve stays within bf16 rounding of fp32 training
    (the fp32 run is the reference), and autocast really ran (the losses are not bit-identical)."""
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    cfg = TrainConfig(epochs=4, lr=5e-3, batch_size=4, grad_accum=1, max_source_length=64, max_target_length=16)
    batch = collate(tokenize_rows(ROWS, template, 64, 16), tok.pad_token_id)
    losses, requested = {}, []
    real_autocast = torch.autocast  # the dtype asked for, named: CUDA's default would be float16
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: requested.append(k.get("dtype")) or real_autocast(*a, **k))
    for bf16 in (False, True):
        model = _model(tiny_model_dir)
        requested.clear()
        stats = train_stage(model, template, ROWS, cfg, seed=3, bf16=bf16)
        assert stats["bf16"] is bf16 and (torch.bfloat16 in requested) is bf16
        with torch.no_grad():
            losses[bf16] = model(**_on_device(batch, model)).loss.item()
    assert losses[True] != losses[False]
    assert abs(losses[True] - losses[False]) < 0.05 * losses[False]


def test_train_bf16_auto_decides_by_the_cpu_measurement(tmp_path, monkeypatch):
    """`auto` on a CPU follows the cached matmul measurement; on/off are obeyed as written."""
    import json

    from ssr.models import dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dtype, "_cpu_name", lambda: "Test CPU | flags")
    for speedup, expected in ((2.0, True), (1.1, False), (0.01, False)):
        cache = tmp_path / str(speedup)
        key_file = None
        dtype.cpu_bf16_speedup(cache)  # writes the cache file with the real measurement
        (key_file,) = cache.glob("cpu-bf16-*.json")
        key_file.write_text(json.dumps({"bf16_speedup": speedup}))
        assert dtype.resolve_autocast("auto", cache) is expected
        assert dtype.resolve_autocast("on", cache) is True and dtype.resolve_autocast("off", cache) is False


def test_osf_trains_under_bf16_autocast(tiny_model_dir):
    """PEFT's OSF projects each gradient in a hook; under autocast the hook must still see and
    return fp32 (a bf16 result stops backward). What OSF freezes stays frozen."""
    from ssr.models.lora import attach_osf

    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    cfg = TrainConfig(epochs=1, lr=5e-3, batch_size=4, grad_accum=1, max_source_length=64, max_target_length=16)
    model = attach_osf(load_base_model(str(tiny_model_dir)), ["q_proj", "v_proj"], 0.5)
    def frozen_state():
        state = {k: v for k, v in model.named_parameters() if not v.requires_grad} | dict(model.named_buffers())
        return {k: v.detach().clone() for k, v in state.items()}

    before = frozen_state()
    trained = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    stats = train_stage(model, template, ROWS, cfg, seed=3, bf16=True)
    assert stats["bf16"] is True and stats["steps"] == 2 and stats["final_loss"] == stats["final_loss"]
    after = frozen_state()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(not torch.equal(v, dict(model.named_parameters())[k]) for k, v in trained.items())


def _sorted_chunks(lengths: list[int], size: int) -> list[tuple[int, ...]]:
    """Consecutive chunks of the sorted lengths: what length grouping must batch together
    (while every row fits one mega-batch of 16 batches)."""
    ordered = sorted(lengths)
    return sorted(tuple(ordered[i : i + size]) for i in range(0, len(ordered), size))


def test_length_grouped_batches_are_runs_of_similar_lengths_in_seeded_order():
    lengths = [(7 * i) % 23 + 1 for i in range(23)]  # 23 distinct lengths in scrambled order
    batches = length_grouped_batches(lengths, 4, seed=5)
    assert sorted(tuple(sorted(lengths[i] for i in b)) for b in batches) == _sorted_chunks(lengths, 4)
    assert length_grouped_batches(lengths, 4, seed=5) == batches  # seeded
    orders = {tuple(map(tuple, length_grouped_batches(lengths, 4, seed=s))) for s in range(4)}
    assert len(orders) > 1  # the batches are shuffled, not served shortest first
    # beyond one mega-batch (16 batches), rows are grouped within each mega-batch only: of 34 rows
    # in batches of 2, the first 32 of the seeded shuffle sorted by length and paired, the last 2 together
    import random

    lengths = [(11 * i) % 37 + 1 for i in range(34)]  # distinct
    order = list(range(34))
    random.Random(9).shuffle(order)
    first = sorted(order[:32], key=lambda i: lengths[i])
    want = {frozenset(first[i : i + 2]) for i in range(0, 32, 2)} | {frozenset(order[32:])}
    assert {frozenset(b) for b in length_grouped_batches(lengths, 2, seed=9)} == want


def test_train_stage_batches_by_length_only_when_asked(tiny_model_dir, monkeypatch):
    """The batches a stage trains on (seen by wrapping the real collate): grouped by length with
    `group_by_length`, plain shuffled batches without."""
    import ssr.training

    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    rows = [{"definition": "Repeat.", "input": " ".join(["apple"] * k), "output": "ok"} for k in (9, 1, 6, 3, 12, 2, 8, 4)]
    lengths = [len(ids) for ids, _ in tokenize_rows(rows, template, 64, 16)]
    seen: list[tuple[int, ...]] = []
    real_collate = ssr.training.collate
    monkeypatch.setattr(ssr.training, "collate", lambda ex, pad: (seen.append(tuple(sorted(len(x) for x, _ in ex))), real_collate(ex, pad))[1])
    for grouped in (True, False):
        seen.clear()
        cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=2, grad_accum=1, max_source_length=64, max_target_length=16,
                          group_by_length=grouped)
        train_stage(_model(tiny_model_dir), template, rows, cfg, seed=3)
        assert (sorted(seen) == _sorted_chunks(lengths, 2)) is grouped


def test_gradient_checkpointing_recomputes_layers_and_learns_the_same_adapter(tiny_model_dir):
    """With `gradient_checkpointing` every decoder layer runs twice per micro-batch (forward,
    then again in the backward pass), LoRA dropout included, and the adapter comes out the same."""
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    weights, calls = {}, {}
    for checkpointing in (False, True):
        cfg = TrainConfig(epochs=1, lr=5e-3, batch_size=4, grad_accum=1, max_source_length=64, max_target_length=16,
                          gradient_checkpointing=checkpointing)
        model = _model(tiny_model_dir, dropout=0.1)
        layer = model.get_base_model().model.layers[0]
        counter = []
        layer.register_forward_pre_hook(lambda *_: counter.append(1))  # pre: recomputation stops early, before the end
        stats = train_stage(model, template, ROWS, cfg, seed=3)
        calls[checkpointing] = len(counter)
        weights[checkpointing] = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        assert stats["steps"] == 2
    assert calls == {False: 2, True: 4}  # 2 micro-batches; each layer recomputed once per micro-batch
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(w, torch.zeros_like(w)) for w in weights[True].values())


def test_weights_load_in_the_configured_dtype_on_the_given_device(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_seed_everything_seeds_each_library_as_by_hand():
    import random

    import numpy as np

    from ssr.training import seed_everything

    seed = 2**32 + 5  # numpy takes seeds below 2**32: it gets the seed modulo 2**32
    random.seed(seed)
    np.random.seed(5)
    torch.manual_seed(seed)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    seed_everything(seed)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_batches_and_dropout_seeds_by_hand():
    import random

    from ssr.training import micro_batch_seed, shuffled_batches

    order = list(range(10))
    random.Random(4).shuffle(order)
    assert shuffled_batches(10, 4, 4) == [order[0:4], order[4:8], order[8:10]]
    # the dropout seed of micro-batch `index` of `epoch`: seed * 1,000,003 + epoch * 100,003 + index, modulo 2**63
    assert [micro_batch_seed(0, 0, 5), micro_batch_seed(0, 1, 0), micro_batch_seed(1, 0, 0), micro_batch_seed(3, 2, 1)] == [
        5, 100_003, 1_000_003, 3_200_016]
    assert micro_batch_seed(2**62, 0, 0) == 2**62 and micro_batch_seed(2**63, 1, 1) == 100_004  # wrapped, an int


def test_collate_pads_right_and_masks_by_hand():
    batch = collate([([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert {k: v.dtype for k, v in batch.items()} == {k: torch.long for k in batch}


def test_gradient_checkpointing_is_non_reentrant_without_a_cache_on_plain_models_too(tiny_model_dir):
    """Also for a model without an adapter (full fine-tuning), checkpointing is switched on, the
    non-reentrant kind (it needs no input that requires grad, and works under DDP) and the
    KV cache off (useless in training)."""
    from ssr.training import enable_gradient_checkpointing

    for model in (load_base_model(str(tiny_model_dir)), _model(tiny_model_dir)):
        enable_gradient_checkpointing(model)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert inner.is_gradient_checkpointing and inner.config.use_cache is False
        layer = inner.model.layers[0]
        assert layer._gradient_checkpointing_func.keywords == {"use_reentrant": False}


def test_deepspeed_is_told_the_stages_batch_and_clipping():
    """accelerate fills DeepSpeed's `auto` batch values from a dataloader this loop does not use:
    they are set from the stage's config (figures by hand; the accelerator is a plain object
    carrying what these two functions read)."""
    from types import SimpleNamespace

    from ssr.training import _configure_deepspeed, uses_deepspeed

    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 2}})
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=2)
    assert uses_deepspeed(accelerator) and not uses_deepspeed(SimpleNamespace(state=SimpleNamespace()))
    _configure_deepspeed(accelerator, TrainConfig(batch_size=4, grad_accum=3, max_grad_norm=0.5))
    assert plugin.deepspeed_config == {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4,
                                       "gradient_accumulation_steps": 3, "train_batch_size": 24, "gradient_clipping": 0.5}


def test_steps_lengths_and_the_empty_stage(tiny_model_dir):
    """Optimizer steps per epoch = micro-batches / accumulation, at least one; prompts and
    responses are cut to the configured lengths; no rows is an error naming the stage."""
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    long_rows = [{"definition": "Repeat. " * 20, "input": "word " * 40, "output": "WORD " * 20} for _ in range(8)]
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=2, grad_accum=2, max_source_length=16, max_target_length=4)
    stats = train_stage(_model(tiny_model_dir), template, long_rows, cfg, seed=0)
    assert stats["steps"] == 2 and 0 < stats["tokens"] <= 8 * (16 + 4)  # 4 micro-batches of 2, 2 per step
    one = train_stage(_model(tiny_model_dir), template, ROWS[:2], cfg.model_copy(update={"grad_accum": 1}), seed=0)
    assert one["steps"] == 1
    with pytest.raises(ValueError) as err:
        train_stage(_model(tiny_model_dir), template, [], cfg, seed=0)
    assert str(err.value) == "train: no training rows; the plan checks should have refused this"


def _lr_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """The schedule's multiplier at optimizer step `step`, by hand from transformers' definitions
    (linear warmup, then cosine or linear decay to zero at `total`)."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)


def _reference_stage(model, template, rows, cfg: TrainConfig, seed: int, penalty) -> dict:
    """A second, plain implementation of one stage on one process: torch's AdamW with the
    schedule applied by hand, `(loss + penalty) / grad_accum` per micro-batch, clipping, each
    micro-batch's dropout seeded by its place in the epoch. Returns what a stage must report."""
    from ssr.training import micro_batch_seed, shuffled_batches

    examples = tokenize_rows(rows, template, cfg.max_source_length, cfg.max_target_length)
    micro_batches = math.ceil(len(examples) / cfg.batch_size)
    total = math.ceil(cfg.epochs * math.ceil(micro_batches / cfg.grad_accum))
    warmup = int(cfg.warmup_ratio * total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pad = template.tokenizer.pad_token_id
    model.train()
    step, epoch, tokens, clipped, step_means = 0, 0, 0, 0, []
    while step < total:
        order = (length_grouped_batches([len(x) for x, _ in examples], cfg.batch_size, seed + epoch) if cfg.group_by_length
                 else shuffled_batches(len(examples), cfg.batch_size, seed + epoch))
        for first in range(0, len(order), cfg.grad_accum):
            losses = []
            for index in range(first, min(first + cfg.grad_accum, len(order))):
                torch.manual_seed(micro_batch_seed(seed, epoch, index))
                batch = _on_device(collate([examples[i] for i in order[index]], pad), model)
                loss = model(**batch).loss
                extra = penalty()
                ((loss + extra) / cfg.grad_accum).backward()
                losses.append(loss.item())
                last_penalty = extra.item()
                tokens += sum(len(examples[i][0]) for i in order[index])
            step_means.append(sum(losses) / len(losses))
            clipped += float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)) > cfg.max_grad_norm
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg.scheduler, step, warmup, total)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == total:
                break
        epoch += 1
    model.eval()
    assert clipped, "the reference settings must make clipping act"
    return {"examples": len(examples), "steps": total, "epochs": cfg.epochs, "tokens": tokens,
            "final_loss": step_means[-1], "final_penalty": last_penalty, "step_losses": step_means}


def _squared_drift(model) -> QuadraticPenalty:
    """The penalty L2 hands the trainer: half the squared distance of the trainable weights from where they started."""
    params = [p for p in model.parameters() if p.requires_grad]
    return QuadraticPenalty(params, [p.detach().clone() for p in params], None, 0.5)


@pytest.mark.parametrize("scheduler,group_by_length", [("cosine", False), ("linear", True)])
def test_a_stage_is_the_plain_loop_written_by_hand(tiny_model_dir, monkeypatch, scheduler, group_by_length):
    """The stage's adapter and statistics equal a plain reference loop's (above) over 2.5 epochs
    of 7 rows, batch 2, accumulation 3: a short last step each epoch, a fractional last epoch,
    warmup, weight decay, clipping that acts, LoRA dropout, a penalty. The vocabulary projection
    runs on fewer positions than the batch has (the sparse loss). Its progress bar counts the
    steps and shows each step's mean loss."""
    import time

    import ssr.training

    bars, postfixes = [], []
    real_tqdm = ssr.training.tqdm

    def recording_tqdm(*args, **kwargs):
        bar = real_tqdm(*args, **kwargs)
        bar.set_postfix = lambda **values: postfixes.append(values)
        bars.append((kwargs, bar))
        return bar

    monkeypatch.setattr(ssr.training, "tqdm", recording_tqdm)
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    cfg = TrainConfig(epochs=2.5, lr=2e-2, batch_size=2, grad_accum=3, weight_decay=0.1, scheduler=scheduler,
                      warmup_ratio=0.4, max_grad_norm=0.05, max_source_length=64, max_target_length=16,
                      group_by_length=group_by_length, bf16="off")
    rows = ROWS[:7]
    model, reference = _model(tiny_model_dir, dropout=0.2), _model(tiny_model_dir, dropout=0.2)
    widths = []  # (sequence length, positions projected onto the vocabulary) per forward pass
    model.get_base_model().lm_head.register_forward_hook(lambda _m, args, _out: widths[-1].append(args[0].shape[1]))
    model.get_base_model().model.embed_tokens.register_forward_hook(lambda _m, args, _out: widths.append([args[0].shape[1]]))
    started = time.perf_counter()
    stats = train_stage(model, template, rows, cfg, seed=11, desc="stage 2", penalty=_squared_drift(model))
    wall = time.perf_counter() - started
    want = _reference_stage(reference, template, rows, cfg, 11, _squared_drift(reference))

    assert want["steps"] == 5  # 4 micro-batches, 2 steps an epoch, 2.5 epochs
    assert {k: stats[k] for k in ("examples", "steps", "epochs", "tokens")} == {k: want[k] for k in ("examples", "steps", "epochs", "tokens")}
    assert stats["final_loss"] == pytest.approx(want["final_loss"], rel=1e-5)
    assert stats["final_penalty"] == pytest.approx(want["final_penalty"], rel=1e-4, abs=1e-9) and want["final_penalty"] > 0
    assert stats["bf16"] is False and not model.training
    assert len(widths) == 11 and all(kept < length for length, kept in widths)  # 3 + 1, 3 + 1, 3 micro-batches
    assert 0 < stats["seconds"] <= wall + 0.005 and stats["seconds"] == round(stats["seconds"], 2)
    assert isinstance(stats["tokens_per_s"], float) and stats["tokens_per_s"] == round(stats["tokens_per_s"], 1)
    seconds = stats["seconds"]  # rounded to 0.01 s: the rate lies between those the bounds give
    assert stats["tokens"] / (seconds + 0.005) - 0.05 <= stats["tokens_per_s"] <= stats["tokens"] / max(seconds - 0.005, 1e-9) + 0.05
    trained = dict(reference.named_parameters())
    for name, weight in model.named_parameters():
        if weight.requires_grad:
            # fp32 sums in another order per CPU's kernels: 1.6e-6 apart on an AMD EPYC without avx512_bf16
            torch.testing.assert_close(weight, trained[name], rtol=1e-4, atol=1e-5)
    (kwargs, bar), = bars
    assert (bar.total, bar.n, kwargs["desc"], kwargs["unit"], kwargs["leave"], kwargs["disable"]) == (5, 5, "stage 2", "step", False, False)
    assert postfixes == [{"loss": f"{loss:.3f}"} for loss in want["step_losses"]]
