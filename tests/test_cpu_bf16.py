"""bf16 generation on the CPU (models/cpu_bf16.py): the decode attention computes what SDPA
computes, and a model prepared for it answers as the same model in plain bf16 does."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from tunesmith.models.cpu_bf16 import ATTENTION, decode_attention, to_cpu_bf16  # noqa: E402


class _Module(torch.nn.Module):
    """What transformers' attention functions read from the attention module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal, self.training = groups, True, False


def test_decode_attention_by_hand():
    # one head, two keys; the query points at the first key, but the mask hides it
    query = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.bfloat16)
    key = torch.tensor([[[[10.0, 0.0], [0.0, 10.0]]]], dtype=torch.bfloat16)
    value = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.bfloat16)
    seen = decode_attention(_Module(1), query, key, value, None, scaling=1.0)[0]
    assert seen.float().flatten().tolist() == pytest.approx([1.0, 2.0], abs=1e-3)  # e^10 : e^0
    masked = torch.tensor([[[[False, True]]]])
    hidden = decode_attention(_Module(1), query, key, value, masked, scaling=1.0)[0]
    assert hidden.float().flatten().tolist() == [3.0, 4.0]


@pytest.mark.parametrize("padded", [True, False])
def test_decode_attention_matches_sdpa_with_grouped_heads(padded):
    torch.manual_seed(0)
    batch, heads, kv_heads, keys, dim = 3, 6, 2, 9, 8
    query = torch.randn(batch, heads, 1, dim).bfloat16()
    key = torch.randn(batch, kv_heads, keys, dim).bfloat16()
    value = torch.randn(batch, kv_heads, keys, dim).bfloat16()
    mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
    mask[0, :, :, :4] = False  # row 0 is left-padded
    mask = mask if padded else None
    module = _Module(heads // kv_heads)
    ours = decode_attention(module, query, key, value, mask, scaling=dim ** -0.5)[0]
    theirs = sdpa_attention_forward(module, query, key, value, mask, scaling=dim ** -0.5)[0]
    assert ours.shape == theirs.shape == (batch, 1, heads, dim)
    assert torch.allclose(ours.float(), theirs.float(), atol=2e-2)


def test_prompts_and_fp32_go_to_sdpa_unchanged():
    torch.manual_seed(1)
    module = _Module(2)
    prompt = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    one_token_fp32 = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    for args in (prompt, one_token_fp32):
        ours = decode_attention(module, *args, None)[0]
        theirs = sdpa_attention_forward(module, *args, None)[0]
        assert torch.equal(ours, theirs)


def test_prepared_model_answers_as_plain_bf16():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, eos_token_id=1, tie_word_embeddings=True,
                         initializer_range=0.5)  # peaked attention: a wrong one shows
    model = LlamaForCausalLM(config).eval()
    plain = copy.deepcopy(model).to(torch.bfloat16)
    prepared = to_cpu_bf16(model)
    assert prepared.config._attn_implementation == ATTENTION
    assert all(p.dtype == torch.bfloat16 for p in prepared.parameters())
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 9, 8, 7, 6]])  # left-padded rows
    mask = (torch.arange(5) >= torch.tensor([[2], [0], [1]])).long()
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "eos_token_id": 1}
    with torch.inference_mode():
        ours = prepared.generate(input_ids=ids, attention_mask=mask, **settings)
        theirs = plain.generate(input_ids=ids, attention_mask=mask, **settings)
        steps = [_decode_step(m, ids, mask) for m in (prepared, plain)]
    # greedy answers agree (later tokens of a random model can flip on bf16 rounding of near ties)
    assert torch.equal(ours, theirs)
    ours_logits, their_logits = steps
    assert (ours_logits - their_logits).abs().max() <= 0.02 * their_logits.abs().max()


def _decode_step(model, ids, mask):
    """The logits of one decoding step (one query token over the cached prompt)."""
    from transformers import DynamicCache

    from tunesmith.models.generation import cache_argument

    cache, argument = DynamicCache(), cache_argument(model)
    model(input_ids=ids, attention_mask=mask, **{argument: cache}, use_cache=True)
    step = torch.tensor([[11], [12], [13]])
    full_mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
    out = model(input_ids=step, attention_mask=full_mask, **{argument: cache}, use_cache=True)
    return out.logits.float()
