import pytest
import torch

from ssr.config import LoraSettings, TrainConfig
from ssr.models import get_template, load_base_model, load_tokenizer
from ssr.models.lora import attach_lora
from ssr.training import IGNORE_INDEX, causal_lm_loss, collate, supports_sparse_logits, length_grouped_batches, tokenize_rows, train_stage

ROWS = [{"definition": "Write the input in upper case.", "input": w, "output": w.upper()}
        for w in "apple river stone cloud green quick seven table".split()]


def _model(tiny_model_dir, seed=0):
    return attach_lora(load_base_model(str(tiny_model_dir)), LoraSettings(r=4, alpha=8, dropout=0.0), seed)


def test_loss_only_on_response_with_eos(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    (ids, labels), = tokenize_rows(ROWS[:1], template, 64, 16)
    prompt = template.prompt_ids(ROWS[0]["definition"], ROWS[0]["input"])
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id
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
    import transformers

    tok = load_tokenizer(str(tiny_model_dir))
    model = _model(tiny_model_dir)
    if not supports_sparse_logits(model):  # seen with transformers 5.17: training falls back to full logits
        pytest.skip(f"transformers {transformers.__version__} has no boolean logits_to_keep; the plain loss is used")
    batch = _on_device(collate(tokenize_rows(ROWS, get_template("raw", tok), 64, 16), tok.pad_token_id), model)
    with torch.no_grad():
        assert torch.allclose(causal_lm_loss(model, batch, True), causal_lm_loss(model, batch, False), atol=1e-5)


def test_gradient_checkpointing_recomputes_layers_and_learns_the_same_adapter(tiny_model_dir):
    """With `gradient_checkpointing` every decoder layer runs twice per micro-batch (forward,
    then again in the backward pass), LoRA dropout included, and the adapter comes out the same."""
    tok = load_tokenizer(str(tiny_model_dir))
    template = get_template("raw", tok)
    weights, calls = {}, {}
    for checkpointing in (False, True):
        cfg = TrainConfig(epochs=1, lr=5e-3, batch_size=4, grad_accum=1, max_source_length=64, max_target_length=16,
                          gradient_checkpointing=checkpointing)
        model = attach_lora(load_base_model(str(tiny_model_dir)), LoraSettings(r=4, alpha=8, dropout=0.1), seed=0)
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
