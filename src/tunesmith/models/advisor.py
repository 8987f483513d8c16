"""Choosing a base model: a ranking of the catalog by task, memory (models/memory.py's estimate
of a training step), license and time. Time: floating-point
work per token (6 x params for full training, 4 x params with LoRA: no weight gradients for the
frozen base) over the device's effective throughput.

    advice = recommend(Need(task="classification", memory_gb=16, commercial=True), Hardware.detect())
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from tunesmith.models.catalog import TASK_FAMILIES, CatalogEntry, load_catalog
from tunesmith.models.memory import GB, Memory, Method, Step, training_memory

CPU_FLOPS_PER_CORE = 35e9
"""Effective bf16 training throughput of one modern x86 core (measured: SmolLM2-135M LoRA on this
2-core AVX512-BF16 machine, ~130 tokens/s x 4 x 135M FLOPs)."""
CHECKPOINTING_COST = 1.33
"""Activation checkpointing recomputes the forward pass: about a third more work per step."""
GPU_FLOPS = 120e12
"""Effective bf16 throughput assumed for a CUDA GPU (about 40% of an A100/L4-class peak)."""


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
    batch 1 with activation checkpointing; then QLoRA (train.method qlora: decoders). Decoders are
    estimated as tunesmith's SFT backend trains them, with the fused chunked head."""
    precision = "bf16" if hardware.device == "cuda" else "autocast"
    setups = [Setup("full", need.batch, False)] if entry.family == "encoder" and entry.params < 1e9 else []
    setups += [Setup("lora", need.batch, False), Setup("lora", 1, True)]
    if entry.family == "causal_lm":
        setups += [Setup("qlora", 1, True)]
    for setup in setups:
        memory = training_memory(entry, Step(setup.method, need.seq, setup.batch, precision,
                                             device=hardware.device, checkpointing=setup.checkpointing,
                                             fused_head=entry.family == "causal_lm"))
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
             "conditions": f"commercial use with conditions: {entry.conditions}",
             "unknown": "commercial use unknown: read the model's own card"}[entry.commercial]
    gated = "; gated: accept its terms on the hub first" if entry.gated else ""
    reasons.append(f"{entry.license}: {terms}{gated}")
    return reasons
