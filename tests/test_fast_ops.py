"""fast_ops computes the same numbers as the plain computation: values and gradients, in fp32
(equal means equal up to summation order), on hand-sized tensors and on the tiny Llama."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train import fast_ops
from tunesmith.train.sft_backend import (
    AnswerCollator,
    answer_loss,
    fused_head,
    keep_adapter_inputs_in_bf16,
    short_attention,
)


def test_linear_cross_entropy_equals_the_head_then_cross_entropy(monkeypatch):
    """37 rows in chunks of 16 (three chunks, the last one short): loss, d/dhidden and d/dweight
    equal F.cross_entropy over the whole [37, 50] logits."""
    monkeypatch.setattr(fast_ops, "CHUNK_ELEMENTS", 16 * 50)
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    ours = fast_ops.linear_cross_entropy(hidden, weight, targets)
    (ours * 0.5).backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    theirs = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (theirs * 0.5).backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert torch.allclose(ours_grads[0], hidden.grad, atol=1e-6)
    assert torch.allclose(ours_grads[1], weight.grad, atol=1e-6)


def test_row_weights_scale_each_rows_loss_and_gradient(monkeypatch):
    """data.bias.mitigate: reweight. Rows weighted 0, 1 and 2.5: the same as weighting
    F.cross_entropy's per-row losses, in value and gradient."""
    monkeypatch.setattr(fast_ops, "CHUNK_ELEMENTS", 2 * 11)
    torch.manual_seed(2)
    hidden = torch.randn(3, 4, requires_grad=True)
    weight = torch.randn(11, 4)
    targets, row_weights = torch.tensor([1, 10, 4]), torch.tensor([0.0, 1.0, 2.5])
    fast_ops.linear_cross_entropy(hidden, weight, targets, row_weights).backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    theirs = (F.cross_entropy(hidden @ weight.T, targets, reduction="none") * row_weights).sum()
    theirs.backward()
    assert torch.allclose(ours, hidden.grad, atol=1e-6)
    assert torch.equal(ours[0], torch.zeros(4))


def test_linear_cross_entropy_without_gradients_makes_none():
    hidden, weight = torch.randn(5, 4), torch.randn(7, 4)
    targets = torch.tensor([0, 6, 3, 3, 1])
    with torch.no_grad():
        loss = fast_ops.linear_cross_entropy(hidden, weight, targets)
    assert float(loss) == pytest.approx(float(F.cross_entropy(hidden @ weight.T, targets, reduction="sum")))
    assert loss.grad_fn is None


def attention_inputs(batch: int, length: int) -> tuple[torch.Tensor, ...]:
    """6 query heads over 2 key/value heads (grouped-query attention), head dim 8."""
    torch.manual_seed(1)
    query = torch.randn(batch, 6, length, 8, requires_grad=True)
    key = torch.randn(batch, 2, length, 8, requires_grad=True)
    value = torch.randn(batch, 2, length, 8, requires_grad=True)
    return query, key, value


class Layer(torch.nn.Module):
    is_causal, num_key_value_groups = True, 3


def test_short_causal_attention_equals_sdpa_forward_and_backward():
    outputs = []
    for attend in (fast_ops.short_causal_attention, _sdpa):
        query, key, value = attention_inputs(3, 11)
        out, _ = attend(Layer(), query, key, value, None)
        out.pow(2).sum().backward()
        outputs.append((out.detach(), query.grad, key.grad, value.grad))
    assert outputs[0][0].shape == (3, 11, 6, 8)  # [batch, length, heads, head_dim]
    for ours, theirs in zip(outputs[0], outputs[1], strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def test_short_causal_attention_hands_long_rows_and_masks_to_sdpa(monkeypatch):
    """Above SHORT_SCORES, or with a mask, the SDPA function itself runs (a spy counts it)."""
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    spy = lambda *a, **k: calls.append(a[1].shape) or (None, None)  # noqa: E731
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    query, key, value = attention_inputs(2, 10)
    fast_ops.short_causal_attention(Layer(), query, key, value, None)
    assert calls == []
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    fast_ops.short_causal_attention(Layer(), query, key, value, mask)
    monkeypatch.setattr(fast_ops, "SHORT_SCORES", 2 * 6 * 10 * 10 - 1)
    fast_ops.short_causal_attention(Layer(), query, key, value, None)
    assert calls == [(2, 6, 10, 8), (2, 6, 10, 8)]


@pytest.fixture
def tiny_lora(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, lora)


def batch() -> dict:
    return AnswerCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7, 8, 9, 10, 11, 12, 13], "assistant_masks": [0, 0, 0, 0, 1, 1, 1, 1, 1]},
        {"input_ids": [20, 21, 22, 23], "assistant_masks": [0, 0, 1, 1]},
    ])


def loss_and_grads(model, fused: bool) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    total, _ = answer_loss(model, batch(), attention_mask=False, fused=fused)
    total.backward()
    return total.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_fused_head_and_short_attention_train_the_tiny_model_as_the_plain_path(tiny_lora):
    """The loss and every LoRA gradient of a step are the same with the fused head and the short
    attention as with the plain head on SDPA; the model is back on SDPA afterwards."""
    assert fused_head(tiny_lora)
    plain = loss_and_grads(tiny_lora, fused=False)
    with short_attention(tiny_lora):
        assert tiny_lora.get_base_model().config._attn_implementation == fast_ops.NAME
        fast = loss_and_grads(tiny_lora, fused=True)
    assert tiny_lora.get_base_model().config._attn_implementation == "sdpa"
    assert fast[0] == pytest.approx(plain[0], rel=1e-5)
    assert torch.allclose(fast[1], plain[1], rtol=1e-4, atol=1e-6)


def test_weighted_rows_in_a_batch_on_both_head_paths(tiny_lora):
    """A batch with row weights [2, 0]: the loss is twice the first row's, on the fused and the
    plain head alike."""
    weighted = {**batch(), "weights": torch.tensor([2.0, 0.0])}
    alone = {k: v[:1] for k, v in batch().items()}
    with torch.no_grad():
        first, _ = answer_loss(tiny_lora, alone, attention_mask=False)
        for fused in (True, False):
            total, _ = answer_loss(tiny_lora, weighted, attention_mask=False, fused=fused)
            assert float(total) == pytest.approx(2 * float(first), rel=1e-5)


def test_adapter_inputs_stay_in_bf16_with_the_same_product(tiny_lora):
    """Under autocast, switching PEFT's input cast off changes no number: the matmul was bf16
    either way. 2 layers x 7 linear layers in the tiny Llama."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = loss_and_grads(tiny_lora, fused=True)
        assert keep_adapter_inputs_in_bf16(tiny_lora) == 14
        after = loss_and_grads(tiny_lora, fused=True)
    assert after[0] == pytest.approx(before[0], rel=1e-6)
    assert torch.equal(after[1], before[1])


def test_models_that_rescale_their_logits_keep_the_plain_head(tiny_lora):
    tiny_lora.get_base_model().config.final_logit_softcapping = 30.0
    assert not fused_head(tiny_lora)
