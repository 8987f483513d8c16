"""Two cheaper ways to compute the same numbers in a training step, used by the SFT backend
(sft_backend.py). Each was measured in bench/train_throughput.py on SmolLM2-135M (2 CPU cores)
and is tested against the plain computation in tests/test_train_speed.py.

1. `linear_cross_entropy`: the vocabulary head and its cross-entropy in chunks of rows, with the
   gradient computed in the same pass (as Liger's fused linear cross-entropy does on GPUs). The
   [tokens, vocab] logits never exist whole, and the slow log-softmax backward over all of them
   is gone: on the longest alpaca batch (3,000 answer tokens x 49k vocabulary) that backward
   alone took 1.0 s of a 14.9 s step.
2. `short_causal_attention`: causal attention as two matmuls and a softmax when the score matrix
   is small. SDPA's CPU flash kernel pays a fixed cost per block; for short rows (the demo's
   tickets) the plain computation is 2x faster forward and backward, for long rows slower. It
   is registered as an attention implementation ("tunesmith_sdpa") that hands every other case
   (masks, dropout, GPUs, long rows, decoding) to transformers' SDPA function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers.integrations.sdpa_attention as sdpa  # looked up per call: tests put a spy there

CHUNK_ELEMENTS = 256 * 49152
"""Logits per chunk on the CPU (rows x vocabulary): 256 rows of SmolLM2's 49k vocabulary, 50 MB
in fp32. Measured on the alpaca bench (eager, tok/s): whole 290, chunks of 2048 rows 305, 1024
340, 512 340, 256 354, 128 354."""


def chunk_rows(rows: int, vocab: int, hidden: int, device: str) -> int:
    """Rows of logits per chunk of the fused head. On the CPU a fixed budget of CHUNK_ELEMENTS
    (measured above). On a GPU, which wants big matmuls, Liger's rule (its fused linear
    cross-entropy): the rows split into ceil(vocab / hidden) chunks, rounded up to a power of two,
    so that a chunk's logits take about the memory of the hidden states themselves.
    scripts/gpu_check.py measures it against plain cross-entropy at a 128k vocabulary."""
    if device != "cuda":
        return max(16, CHUNK_ELEMENTS // vocab)
    chunks = -(-vocab // hidden)
    return max(16, 1 << max(0, (-(-rows // chunks) - 1).bit_length()))

SHORT_SCORES = 6_000_000
"""Largest batch x heads x length^2 that short_causal_attention computes itself. Measured
forward + backward per layer (bf16, 9 heads, 3 key/value heads): batch 4 x 88 tokens 3.2 ms
against SDPA's 5.5; 8 x 266 (5.1M scores) 34.8 against 43.5; 4 x 384 (5.3M) 27.4 against
35.6; 8 x 320 (7.4M) 61.8 against 51.9; 8 x 512 259 against 113."""

NAME = "tunesmith_sdpa"


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), the gradients made chunk by
    chunk in the forward pass and kept for backward (an [N, d] tensor, not [N, vocab])."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                row_weights: torch.Tensor | None, rows: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], rows):
            chunk, wanted = hidden[start:start + rows], targets[start:start + rows]
            scale = None if row_weights is None else row_weights[start:start + rows].float()
            logits = (chunk @ weight.T).float()
            log_total = torch.logsumexp(logits, dim=-1)
            losses = log_total - logits.gather(1, wanted[:, None]).squeeze(1)
            total += (losses if scale is None else losses * scale).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = logits.sub_(log_total[:, None]).exp_()  # softmax, in place
            grad[torch.arange(wanted.numel(), device=grad.device), wanted] -= 1
            if scale is not None:
                grad *= scale[:, None]
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + rows] = grad @ weight
            if grad_weight is not None:
                grad_weight += (grad.T @ chunk).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple:
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype),
                None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The summed cross-entropy of `hidden @ weight.T` ([N, d] x [vocab, d]) against `targets`
    [N] (each row's term times `row_weights` when given), in float32, with the matmuls in
    autocast's dtype when autocast is on (as the head's nn.Linear would run)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    rows = chunk_rows(hidden.shape[0], weight.shape[0], weight.shape[1], device)
    if not torch.is_grad_enabled():  # evaluation: no gradient is made, even for trainable weights
        hidden, weight = hidden.detach(), weight.detach()
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets, row_weights, rows)


def short_causal_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature ([batch, heads, length, head_dim] in,
    [batch, length, heads, head_dim] out)."""
    batch, heads, length, head_dim = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    special = any(kwargs.get(k) is not None for k in ("softcap", "sliding_window", "position_bias"))
    if (query.device.type != "cpu" or attention_mask is not None or dropout or not causal or special
            or length == 1 or key.shape[2] != length or batch * heads * length * length > SHORT_SCORES):
        return sdpa.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    repeats = heads // key.shape[1]
    key, value = sdpa.repeat_kv(key, repeats), sdpa.repeat_kv(value, repeats)
    scale = scaling if scaling is not None else head_dim ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1, dtype=torch.float32)
    return torch.matmul(weights.to(value.dtype), value).transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register short_causal_attention (and SDPA's mask maker) under NAME; the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, short_causal_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
