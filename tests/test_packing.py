"""Padding-free packing (train.packing): rows concatenated with positions restarting per row,
attention kept inside each row, the loss on the answer tokens only; packed equals unpacked."""

from __future__ import annotations

import pytest
import torch

from tunesmith import pipeline
from tunesmith.artifacts import TrainSummary, load
from tunesmith.models.chat import training_rows
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run
from tunesmith.train.packing import pack_rows
from tunesmith.train.sft_backend import AnswerCollator, answer_loss, short_attention


def test_rows_are_packed_first_fit_decreasing_with_positions_restarting():
    rows = [{"input_ids": [i] * n, "assistant_masks": [1] * n} for i, n in enumerate([5, 3, 4, 2], start=1)]
    packed = pack_rows(rows, max_length=8)
    assert [p["input_ids"] for p in packed] == [[1] * 5 + [2] * 3, [3] * 4 + [4] * 2]
    assert packed[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert packed[1]["position_ids"] == [0, 1, 2, 3, 0, 1]
    # the first token of every row is no target: nothing of its own row comes before it
    assert packed[0]["assistant_masks"] == [0, 1, 1, 1, 1, 0, 1, 1]
    assert all(len(p["input_ids"]) <= 8 for p in packed)
    weighted = pack_rows([{**rows[0], "weight": 2.0}, {**rows[1], "weight": 0.5}], max_length=8)
    assert weighted[0]["token_weights"] == [2.0] * 5 + [0.5] * 3


@pytest.fixture
def tiny_rows(tiny_model_dir):
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", "train.max_length=1024"])
    tokenizer = load_tokenizer(recipe.model)
    records = [{"messages": [{"role": "user", "content": f"code for {c}" + " please" * i},
                             {"role": "assistant", "content": c[:2].upper()}], "meta": {}}
               for i, c in enumerate(["red", "blue", "green", "black", "white", "pink"])]
    rows = training_rows(tokenizer, records, recipe.train, None)
    model = load_model(recipe.model, str(tiny_model_dir), "cpu")
    return model, tokenizer, rows


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "tunesmith"])
def test_packed_losses_and_gradients_equal_unpacked(tiny_rows, attention):
    """Each example's answer-token loss, and the gradient of every weight, are the same packed
    (three rows in one, positions restarting, no attention across rows) as row by row."""
    model, tokenizer, rows = tiny_rows
    collate = AnswerCollator(tokenizer.pad_token_id)
    context = short_attention(model) if attention == "tunesmith" else torch.autocast("cpu", enabled=False)
    with context:
        singles = []
        model.zero_grad()
        for row in rows:
            alone = {**row, "assistant_masks": [0, *row["assistant_masks"][1:]]}
            loss, _ = answer_loss(model, collate([alone]), attention_mask=False, fused=True)
            loss.backward()
            singles.append(loss.item())
        unpacked = _grads(model)
        packed_rows = pack_rows(rows, max_length=3 * max(len(r["input_ids"]) for r in rows))
        assert len(packed_rows) < len(rows)  # several rows did share a packed row
        model.zero_grad()
        batch = collate(packed_rows)
        assert "position_ids" in batch
        total, _ = answer_loss(model, batch, attention_mask=False, fused=True)
        total.backward()
        packed = _grads(model)
    assert total.item() == pytest.approx(sum(singles), rel=1e-5)
    assert packed.keys() == unpacked.keys()
    for name in packed:
        torch.testing.assert_close(packed[name], unpacked[name], rtol=1e-4, atol=1e-6, msg=name)


def test_each_packed_example_sees_only_itself(tiny_rows):
    """The logits of a row inside a packed row equal the row's own: attention does not cross.
    (transformers reads packing from the positions only without a cache: training's use_cache=False.)"""
    model, tokenizer, rows = tiny_rows
    first, second = rows[0], rows[1]
    packed = pack_rows([first, second], max_length=len(first["input_ids"]) + len(second["input_ids"]))[0]
    with torch.no_grad():
        together = model(input_ids=torch.tensor([packed["input_ids"]]),
                         position_ids=torch.tensor([packed["position_ids"]]), use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in (first, second)]
    order = sorted([first, second], key=lambda r: -len(r["input_ids"]))
    expected = torch.cat([alone[[first, second].index(r)] for r in order])
    torch.testing.assert_close(together, expected, rtol=1e-4, atol=1e-5)
    # without the restarting positions the second row would attend to the first
    with torch.no_grad():
        crossed = model(input_ids=torch.tensor([packed["input_ids"]]), use_cache=False).logits[0]
    assert not torch.allclose(crossed, expected, atol=1e-3)


def test_a_packed_run_trains_on_the_same_tokens_in_fewer_rows(tmp_path, tiny_model_dir, chat_files):
    common = [f"model.name={tiny_model_dir}", f"data.train={chat_files['train']}",
              f"data.test={chat_files['test']}", f"output.dir={tmp_path / 'runs'}", "train.batch_size=4",
              "train.epochs=1", "train.max_length=1024", "data.val_fraction=0.125"]
    plain = load_recipe(None, [*common, "name=plain", "train.packing=false"])
    packed = load_recipe(None, [*common, "name=packed", "train.packing=true"])
    steps = {}
    for recipe in (plain, packed):
        steps[recipe.name] = pipeline.fine_tune(recipe).steps
    a = load(TrainSummary, open_run(plain).train_summary)
    b = load(TrainSummary, open_run(packed).train_summary)
    assert a.train_examples == 42 and b.train_examples < 42  # 42 rows into fewer packed rows
    assert b.tokens_seen == a.tokens_seen  # the same real tokens, none of them padding
    assert steps["packed"] < steps["plain"]
    assert load_recipe(open_run(packed).recipe).train.packing is True
