"""The decoder SFT backend's speed levers change how a step is computed, never what it computes:
each is checked against the plain computation on the tiny Llama (fp32, so equal means equal)."""

import pytest
import torch

from tunesmith.train.sft_backend import (
    IGNORE,
    AnswerCollator,
    answer_loss,
    compile_layers,
    store_frozen_in_bf16,
)


@pytest.fixture
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def rows() -> list[dict]:
    """Three rows of different lengths; the answer is where assistant_masks is 1."""
    return [
        {"input_ids": [5, 6, 7, 8, 9, 10, 11, 12, 13], "assistant_masks": [0, 0, 0, 0, 1, 1, 1, 1, 1]},
        {"input_ids": [20, 21, 22, 23], "assistant_masks": [0, 0, 1, 1]},
        {"input_ids": [30, 31, 32, 33, 34, 35], "assistant_masks": [0, 1, 1, 0, 1, 1]},
    ]


def test_collator_right_pads_and_labels_the_answer_only():
    batch = AnswerCollator(pad_token_id=0)(rows())
    assert batch["input_ids"].shape == (3, 9)
    assert batch["input_ids"][1].tolist() == [20, 21, 22, 23, 0, 0, 0, 0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [9, 4, 6]
    assert batch["labels"][1].tolist() == [IGNORE, IGNORE, 22, 23] + [IGNORE] * 5
    assert batch["labels"][2].tolist() == [IGNORE, 31, 32, IGNORE, 34, 35] + [IGNORE] * 3


def reference_loss(model, row: dict) -> tuple[float, int]:
    """One row alone, unpadded, full logits: the summed cross-entropy of its answer tokens."""
    ids = torch.tensor([row["input_ids"]])
    logits = model(input_ids=ids).logits[0, :-1]
    targets = torch.tensor(row["input_ids"][1:])
    keep = torch.tensor(row["assistant_masks"][1:], dtype=torch.bool)
    loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return float(loss), int(keep.sum())


@pytest.mark.parametrize("attention_mask", [True, False])
def test_answer_only_loss_equals_each_row_scored_alone(tiny, attention_mask):
    """Logits at the answer positions only, right padding with or without a mask: the batch's
    summed loss is the sum of each row's loss computed alone (5 + 2 + 4 = 11 answer tokens here)."""
    batch = AnswerCollator(pad_token_id=0)(rows())
    with torch.no_grad():
        total, outputs = answer_loss(tiny, batch, attention_mask=attention_mask)
        expected = [reference_loss(tiny, row) for row in rows()]
    assert outputs.logits.shape == (11, tiny.config.vocab_size)
    assert [count for _, count in expected] == [5, 2, 4]
    assert float(total) == pytest.approx(sum(loss for loss, _ in expected), rel=1e-5)


def test_answer_only_loss_equals_transformers_causal_lm_loss(tiny):
    """The token mean matches transformers' own loss on the same padded, masked batch."""
    batch = AnswerCollator(pad_token_id=0)(rows())
    with torch.no_grad():
        total, _ = answer_loss(tiny, batch, attention_mask=False)
        theirs = tiny(**batch).loss
    assert float(total) / 11 == pytest.approx(float(theirs), rel=1e-5)


def test_frozen_weights_go_to_bf16_and_the_adapter_stays_fp32(tiny):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert store_frozen_in_bf16(model) == frozen
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert store_frozen_in_bf16(model) == 0  # nothing left to cast


def test_compiled_layers_train_as_eager_ones(tiny_model_dir):
    """Regional compilation: every decoder layer compiled, and a training step's loss and LoRA
    gradients match the eager model's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    batch = AnswerCollator(pad_token_id=0)(rows())
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
        if compiled:
            assert compile_layers(model) == 2
        total, _ = answer_loss(model, batch, attention_mask=False)
        total.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results.append((total.item(), grads))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-4)
    assert torch.allclose(results[1][1], results[0][1], rtol=1e-3, atol=1e-5)


def test_length_grouping_sorts_each_global_batch_and_ignores_the_global_generator():
    """Mega-batches of 50 global batches: on 64 rows every batch of 8 holds neighbours in length,
    the longest batch comes first, and the order is the seed's alone (not the global RNG's)."""
    from tunesmith.train.sft_backend import GlobalLengthGroupedSampler

    lengths = [(i * 37) % 64 + 1 for i in range(64)]  # 1..64 in a scrambled order
    torch.manual_seed(1)
    first = list(GlobalLengthGroupedSampler(8, lengths, seed=42))
    torch.manual_seed(2)
    again = list(GlobalLengthGroupedSampler(8, lengths, seed=42))
    assert first == again and sorted(first) == list(range(64))
    batches = [sorted(lengths[i] for i in first[k:k + 8]) for k in range(0, 64, 8)]
    assert max(batches[0]) == 64
    assert sorted(b[0] for b in batches) == list(range(1, 64, 8))  # each batch: 8 consecutive lengths
    sampler = GlobalLengthGroupedSampler(8, lengths, seed=42)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert epoch1 == first and epoch2 != first  # a new batch order every epoch ...
    smallest = sorted(min(lengths[i] for i in epoch2[k:k + 8]) for k in range(0, 64, 8))
    assert smallest == list(range(1, 64, 8))  # ... of the same batches
