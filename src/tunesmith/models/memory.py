"""How much memory a training step or a served model needs, from a model's architecture numbers.

Training, per device (each data-parallel process holds a replica and trains `batch` rows):
weights + gradients and optimizer states of the trained parameters (all of them, or LoRA's) +
the activations kept for the backward pass + the logits and their gradient + the runtime.
Checked against measured peaks on the CPU (within 25% for a tiny Llama, SmolLM2-135M with LoRA
and MiniLM fully fine-tuned: tests/test_memory_estimate.py) and, when a GPU is lent, on CUDA
(scripts/gpu_check.py). Serving: weights + the KV cache + the runtime.

    memory = training_memory(entry, Step(method="qlora", seq=2048, batch=2, checkpointing=True,
                                         device="cuda", fused_head=True))
    memory.total, memory.describe()
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported for the type only: scripts/gpu_check.py uses this module without pydantic
    from tunesmith.models.catalog import CatalogEntry

GB = 1024 ** 3
OPTIMIZER_BYTES = {"adamw": 8, "rmsprop": 4, "sgd": 0}
"""Optimizer state per trained parameter (fp32): AdamW keeps two moments, RMSprop one."""
RUNTIME_BYTES = {"cpu": 0.45 * GB, "cuda": 0.8 * GB, "mps": 0.5 * GB}
"""What the framework itself holds (allocator, kernels, CUDA context) before a model loads. On
the CPU: the resident memory of a process that imported torch, transformers and PEFT, measured
at 435 and 510 MiB in two virtual environments of the same packages on one host (0.4 GiB before:
a tiny Llama's estimate, nearly all runtime, fell to 0.75 of its measured peak in the second)."""
NF4_BYTES = 0.5 + 1 / 64
"""A 4-bit NF4 weight with double quantization: 4 bits, plus its block of 64's scale as one byte
(the scales' own fp32 scales, one per 256 blocks, round to nothing)."""
ATTENTION_MATRIX_BYTES = 15
"""Per head, query and key position of a materialised attention matrix (see below)."""
LOGIT_BYTES = 16
"""Per vocabulary entry and token: the bf16 logits, their fp32 upcast for the loss, the
log-softmax kept for backward, and the gradient in fp32 and bf16."""
FUSED_LOGIT_BYTES = 8
"""Per vocabulary entry and row of one chunk of the fused head (train/fast_ops.py): the logits
in the compute dtype and in fp32, their softmax made in place, the gradient in the compute dtype."""

Method = Literal["full", "lora", "qlora"]


@dataclass
class Memory:
    weights: float
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    kv_cache: float = 0.0
    runtime: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        """`weights 15.0, optimizer 0.3, ... GiB`: the parts that are not zero."""
        parts = [f"{f.name.replace('_', ' ')} {getattr(self, f.name) / GB:.1f}" for f in fields(self)
                 if getattr(self, f.name) >= 0.05 * GB]
        return ", ".join(parts) + " GiB"


@dataclass(frozen=True)
class Step:
    """What a training step's memory depends on besides the model."""

    method: Method = "lora"
    seq: int = 512
    batch: int = 8
    precision: str = "bf16"
    """The weights': `bf16`, `fp32`, or `autocast` (fp32 weights with bf16 autocast, the CPU's
    bf16 path: autocast's bf16 copies of the weights live through the backward pass)."""
    optimizer: str = "adamw"
    device: str = "cpu"
    rank: int = 16
    checkpointing: bool = False
    lora_dropout: float = 0.0
    fused_head: bool = False
    """The loss is computed by the fused chunked head (tunesmith's SFT backend, or Liger's): the
    logits exist a chunk at a time. Otherwise (TRL, transformers' own loss) all of them at once."""
    chunk_elements: int = 256 * 49152
    """Logits per chunk of the fused head (train/fast_ops.chunk_rows)."""


def lora_parameters(entry: CatalogEntry, rank: int = 16) -> float:
    """Trained parameters of LoRA on every linear layer: rank x (inputs + outputs) per matrix."""
    h, kv, i = entry.hidden, entry.kv_dim, entry.intermediate
    attention = 2 * (h + h) + 2 * (h + kv)          # q, o; k, v
    mlp = 3 * (h + i) if entry.family == "causal_lm" else 2 * (h + i)   # gated MLP in decoders
    per_layer = attention + mlp + (2 * (h + h) + 2 * (h + kv) if entry.family == "seq2seq" else 0) / 2
    return rank * per_layer * entry.layers


def embedding_parameters(entry: CatalogEntry) -> float:
    """The input embeddings and the output head (one matrix when tied): what QLoRA leaves unquantized."""
    return entry.vocab * entry.hidden * (1 if entry.tied_embeddings else 2)


def weight_bytes(entry: CatalogEntry, method: Method, precision: str) -> float:
    """The weights' bytes. QLoRA stores the blocks' linear layers in NF4 and keeps the embeddings
    and the head in the compute dtype (PEFT's k-bit preparation casts them to fp32; tunesmith's
    backend stores the frozen ones back in bf16 when it trains in bf16)."""
    full = 4.0 if precision == "fp32" else 2.0
    if method != "qlora":
        return entry.params * full
    embeddings = embedding_parameters(entry)
    return (entry.params - embeddings) * NF4_BYTES + embeddings * full


def activation_bytes_per_token(entry: CatalogEntry, step: Step, compute_bytes: int) -> float:
    """What one layer keeps for the backward pass, per token (bytes). Counted from what autograd
    saves in a transformer block, and checked against measured peaks (bench/memory.py,
    tests/test_memory_estimate.py):
    - every linear layer's input in the compute dtype: q, k, v, o and the MLP's (gate,) up and down;
    - with LoRA under autocast, lora_A's input again (autocast casts it separately); with LoRA
      dropout, also the dropout mask (1 byte) and the dropped copy (dropout 0, the default, is an
      identity and keeps neither);
    - the two norms' fp32 input and output (the residual stream stays fp32 under autocast);
    - attention's q, k, v and its output; the MLP's intermediate tensors (gated: gate, up,
      act(gate), their product; plain: the output and its activation);
    - encoders and encoder-decoders off CUDA: the attention matrix, which their attention dropout
      (or T5's position bias) makes PyTorch's CPU attention materialise: per head and key
      position the bf16 scores, the masked fp32 scores, the fp32 probabilities, the dropout mask
      and the dropped copy, 15 bytes (decoders' SDPA kernel keeps none of it, nor do CUDA's
      fused kernels, which apply dropout inside)."""
    h, kv, i, a = entry.hidden, entry.kv_dim, entry.intermediate, compute_bytes
    gated = entry.family == "causal_lm"
    linear_inputs = (6 * h + i) if gated else (5 * h + i)
    saved = a * linear_inputs
    if step.method != "full":
        second_copy = step.precision == "autocast" or step.lora_dropout > 0
        mask = 1 if step.lora_dropout > 0 else 0
        saved += ((a if second_copy else 0) + mask) * linear_inputs
    norms = 2 * 8 * h
    attention = a * (h + 2 * kv) + a * h
    mlp = a * (4 * i if gated else 2 * i)
    materialised = not gated and step.device != "cuda"
    matrix = entry.attention_heads * step.seq * ATTENTION_MATRIX_BYTES if materialised else 0
    return saved + norms + attention + mlp + matrix


def training_memory(entry: CatalogEntry, step: Step | None = None, **changes: object) -> Memory:
    """Peak memory of a training step (`changes` override `step`'s fields, e.g. batch=1).

    Activation checkpointing (transformers' per-layer checkpointing) keeps every layer's input
    (the residual stream) and recomputes one layer's activations at a time during backward."""
    step = replace(step or Step(), **changes)  # type: ignore[arg-type]
    trained = entry.params if step.method == "full" else lora_parameters(entry, step.rank)
    compute_bytes = 4 if step.precision == "fp32" else 2
    tokens = step.seq * step.batch
    weights = weight_bytes(entry, step.method, "fp32" if step.precision == "autocast" else step.precision)
    if step.precision == "autocast":
        weights += entry.params * 2
    per_layer = activation_bytes_per_token(entry, step, compute_bytes)
    if step.checkpointing:
        residual = 4 if step.precision in ("autocast", "fp32") else 2
        activations = tokens * (entry.layers * entry.hidden * residual + per_layer)
    else:
        activations = tokens * entry.layers * per_layer
    logits = 0.0
    if entry.family != "encoder":
        if step.fused_head:
            rows = min(tokens, max(16, step.chunk_elements // entry.vocab))
            logits = rows * entry.vocab * FUSED_LOGIT_BYTES + tokens * entry.hidden * compute_bytes
        else:
            logits = tokens * entry.vocab * LOGIT_BYTES
    return Memory(
        weights=weights, gradients=trained * 4, optimizer=trained * OPTIMIZER_BYTES.get(step.optimizer, 8),
        activations=activations, logits=logits, runtime=RUNTIME_BYTES.get(step.device, 0.5 * GB))


def serving_memory(entry: CatalogEntry, context: int = 4096, batch: int = 16, precision: str = "bf16",
                   device: str = "cuda", method: Method = "lora") -> Memory:
    """Weights, the KV cache of `batch` sequences of `context` tokens, and the runtime."""
    kv = 2 * entry.layers * entry.kv_dim * context * batch * (4 if precision == "fp32" else 2)
    return Memory(weights=weight_bytes(entry, method, precision),
                  kv_cache=kv if entry.family != "encoder" else 0.0,
                  runtime=RUNTIME_BYTES.get(device, 0.5 * GB))
