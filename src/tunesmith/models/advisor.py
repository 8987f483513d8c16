"""Choosing a base model: memory and time estimates from a model's architecture numbers, and a
ranking of the catalog by task, memory, license and time.

Memory (bytes), training: weights + gradients and optimizer states of the trained parameters
(all of them, or LoRA's) + activations kept for the backward pass + the logits and their
gradient + the runtime, checked against measured peaks on the CPU (within 25% for a tiny Llama,
SmolLM2-135M with LoRA and MiniLM fully fine-tuned: tests/test_memory_estimate.py); serving:
weights + the KV cache + the runtime. Time: floating-point
work per token (6 x params for full training, 4 x params with LoRA: no weight gradients for the
frozen base) over the device's effective throughput.

    advice = recommend(Need(task="classification", memory_gb=16, commercial=True), Hardware.detect())
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from tunesmith.models.catalog import TASK_FAMILIES, CatalogEntry, load_catalog

GB = 1024 ** 3
OPTIMIZER_BYTES = {"adamw": 8, "rmsprop": 4, "sgd": 0}
"""Optimizer state per trained parameter (fp32): AdamW keeps two moments, RMSprop one."""
RUNTIME_BYTES = {"cpu": 0.4 * GB, "cuda": 0.8 * GB, "mps": 0.5 * GB}
"""What the framework itself holds (allocator, kernels, CUDA context) before a model loads."""
CPU_FLOPS_PER_CORE = 35e9
"""Effective bf16 training throughput of one modern x86 core (measured: SmolLM2-135M LoRA on this
2-core AVX512-BF16 machine, ~130 tokens/s x 4 x 135M FLOPs)."""
CHECKPOINTING_COST = 1.33
"""Activation checkpointing recomputes the forward pass: about a third more work per step."""
GPU_FLOPS = 120e12
"""Effective bf16 throughput assumed for a CUDA GPU (about 40% of an A100/L4-class peak)."""

Method = Literal["full", "lora", "qlora"]


@dataclass(frozen=True)
class Hardware:
    device: Literal["cpu", "cuda", "mps"]
    memory_gb: float
    flops: float
    """Effective training FLOP/s."""

    @classmethod
    def detect(cls) -> Hardware:
        if not _nvidia_driver():  # no GPU: answer without importing torch (seconds on a laptop)
            return cls("cpu", _system_memory_gb(), CPU_FLOPS_PER_CORE * (os.cpu_count() or 1))
        import torch

        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory / GB
            return cls("cuda", memory, GPU_FLOPS * torch.cuda.device_count())
        return cls("cpu", _system_memory_gb(), CPU_FLOPS_PER_CORE * (os.cpu_count() or 1))


def _nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")


def _system_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        return 16.0


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
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits
                + self.kv_cache + self.runtime)


def lora_parameters(entry: CatalogEntry, rank: int = 16) -> float:
    """Trained parameters of LoRA on every linear layer: rank x (inputs + outputs) per matrix."""
    h, kv, i = entry.hidden, entry.kv_dim, entry.intermediate
    attention = 2 * (h + h) + 2 * (h + kv)          # q, o; k, v
    mlp = 3 * (h + i) if entry.family == "causal_lm" else 2 * (h + i)   # gated MLP in decoders
    per_layer = attention + mlp + (2 * (h + h) + 2 * (h + kv) if entry.family == "seq2seq" else 0) / 2
    return rank * per_layer * entry.layers


def weight_bytes(method: Method, precision: str) -> float:
    if method == "qlora":
        return 0.56  # 4-bit NF4 blocks with their fp16 scales, and the 16-bit layers kept out
    return 4.0 if precision == "fp32" else 2.0


ATTENTION_MATRIX_BYTES = 15
"""Per head, query and key position of a materialised attention matrix (see below)."""
LOGIT_BYTES = 16
"""Per vocabulary entry and token: the bf16 logits, their fp32 upcast for the loss, the
log-softmax kept for backward, and the gradient in fp32 and bf16."""


def activation_bytes_per_token(entry: CatalogEntry, method: Method, compute_bytes: int, seq: int,
                               device: str = "cpu") -> float:
    """What one layer keeps for the backward pass, per token (bytes). Counted from what autograd
    saves in a transformer block under bf16 autocast, and checked against measured peaks
    (bench/memory.py, tests/test_memory_estimate.py):
    - every linear layer's input in the compute dtype: q, k, v, o and the MLP's (gate,) up and down;
    - with LoRA, per linear layer also the dropout mask (1 byte) and lora_A's input;
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
    if method != "full":
        saved += (1 + a) * linear_inputs
    norms = 2 * 8 * h
    attention = a * (h + 2 * kv) + a * h
    mlp = a * (4 * i if gated else 2 * i)
    matrix = 0 if gated or device == "cuda" else entry.attention_heads * seq * ATTENTION_MATRIX_BYTES
    return saved + norms + attention + mlp + matrix


def training_memory(entry: CatalogEntry, method: Method = "lora", seq: int = 512, batch: int = 8,
                    precision: str = "bf16", optimizer: str = "adamw", device: str = "cpu",
                    rank: int = 16, checkpointing: bool = False) -> Memory:
    """Peak memory of a training step. `precision` is the weights': `bf16`, `fp32`, or
    `autocast` (fp32 weights with bf16 autocast, the CPU default: autocast's bf16 copies of the
    weights live through the backward pass, so they count too)."""
    trained = entry.params if method == "full" else lora_parameters(entry, rank)
    compute_bytes = 4 if precision == "fp32" else 2
    tokens = seq * batch
    layers_kept = math.sqrt(entry.layers) if checkpointing else entry.layers
    weights = entry.params * weight_bytes(method, "fp32" if precision == "autocast" else precision)
    if precision == "autocast":
        weights += entry.params * 2
    return Memory(
        weights=weights,
        gradients=trained * 4,
        optimizer=trained * OPTIMIZER_BYTES.get(optimizer, 8),
        activations=tokens * layers_kept * activation_bytes_per_token(entry, method, compute_bytes, seq,
                                                                      device),
        logits=(tokens * entry.vocab * LOGIT_BYTES) if entry.family != "encoder" else 0.0,
        runtime=RUNTIME_BYTES.get(device, 0.5 * GB))


def serving_memory(entry: CatalogEntry, context: int = 4096, batch: int = 16, precision: str = "bf16",
                   device: str = "cuda", method: Method = "lora") -> Memory:
    """Weights, the KV cache of `batch` sequences of `context` tokens, and the runtime."""
    bytes_ = weight_bytes(method, precision)
    kv = 2 * entry.layers * entry.kv_dim * context * batch * (4 if precision == "fp32" else 2)
    return Memory(weights=entry.params * bytes_, kv_cache=kv if entry.family != "encoder" else 0.0,
                  runtime=RUNTIME_BYTES.get(device, 0.5 * GB))


def hours_per_million_tokens(entry: CatalogEntry, method: Method, hardware: Hardware) -> float:
    flops_per_token = (6 if method == "full" else 4) * entry.params
    return 1e6 * flops_per_token / hardware.flops / 3600


@dataclass
class Need:
    task: Literal["generation", "classification", "text2text"]
    memory_gb: float | None = None
    """The memory to train in (None: the detected device's)."""
    commercial: bool = False
    """The model will be used commercially: licenses that forbid it are excluded."""
    tokens: float = 1e6
    """Training tokens per epoch (from --data, else one million)."""
    max_hours: float = 8.0
    """Longer estimated epochs rank below those that finish in time."""
    seq: int = 512
    batch: int = 8


@dataclass
class Choice:
    entry: CatalogEntry
    setup: Setup
    memory: Memory
    hours: float
    fits: bool
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Setup:
    method: Method
    batch: int
    checkpointing: bool

    def describe(self) -> str:
        extra = ", batch 1 + activation checkpointing (and train.grad_accum)" if self.checkpointing else ""
        return f"{self.method}{extra}"


def _setup_for(entry: CatalogEntry, need: Need, hardware: Hardware, budget: float) -> tuple[Setup, Memory]:
    """The first setup that fits: full fine-tuning for small encoders, else LoRA; then LoRA at
    batch 1 with activation checkpointing; then QLoRA (CUDA only)."""
    precision = "bf16" if hardware.device == "cuda" else "autocast"
    setups = [Setup("full", need.batch, False)] if entry.family == "encoder" and entry.params < 1e9 else []
    setups += [Setup("lora", need.batch, False), Setup("lora", 1, True)]
    if hardware.device == "cuda":
        setups += [Setup("qlora", 1, True)]
    for setup in setups:
        memory = training_memory(entry, setup.method, need.seq, setup.batch, precision,
                                 device=hardware.device, checkpointing=setup.checkpointing)
        if memory.total <= budget:
            return setup, memory
    return setup, memory


def rank(need: Need, hardware: Hardware) -> list[Choice]:
    """Every catalog model that suits the task and the license, best first: fitting in memory,
    then finishing an epoch in time, then the best-suited family, then the largest."""
    families = TASK_FAMILIES[need.task]
    budget = (need.memory_gb or hardware.memory_gb) * GB
    choices = []
    for entry in load_catalog():
        if entry.family not in families or (need.commercial and entry.commercial == "no"):
            continue
        setup, memory = _setup_for(entry, need, hardware, budget)
        hours = (hours_per_million_tokens(entry, setup.method, hardware) * need.tokens / 1e6
                 * (CHECKPOINTING_COST if setup.checkpointing else 1.0))
        choices.append(Choice(entry, setup, memory, hours, memory.total <= budget,
                              _reasons(entry, need, setup, memory, hours, budget, families)))
    return sorted(choices, key=lambda c: (not c.fits, c.hours > need.max_hours,
                                          families.index(c.entry.family),
                                          need.commercial and c.entry.commercial != "yes", -c.entry.params))


def _reasons(entry: CatalogEntry, need: Need, setup: Setup, memory: Memory, hours: float, budget: float,
             families: tuple[str, ...]) -> list[str]:
    reasons = [f"{entry.family} ({'best suited' if entry.family == families[0] else 'also able'} for "
               f"{need.task})",
               f"{setup.describe()}: ~{memory.total / GB:.1f} GB to train "
               f"({'fits' if memory.total <= budget else 'over'} {budget / GB:.0f} GB)",
               f"~{hours:.1f} h per epoch of {need.tokens:,.0f} tokens"
               + ("" if hours <= need.max_hours else f" (over {need.max_hours:g} h)")]
    terms = {"yes": "commercial use allowed", "no": "non-commercial only",
             "conditions": f"commercial use with conditions: {entry.conditions}"}[entry.commercial]
    gated = "; gated: accept its terms on the hub first" if entry.gated else ""
    reasons.append(f"{entry.license}: {terms}{gated}")
    return reasons
