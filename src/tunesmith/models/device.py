"""Where a model runs and in which precision, decided per device from measurements.

    resolve_device(cfg)            cuda, then Apple mps, then cpu (or the recipe's choice)
    resolve_dtype(cfg, device)     weights: bf16 on a GPU that computes bf16 natively, fp32 otherwise
    mixed_precision(recipe, dev)   training autocast: bf16 where the hardware computes bf16, fp16
                                   (with loss scaling) on older GPUs (T4, V100)
    attention_implementation(...)  flash_attention_2 on CUDA where installed, else SDPA
    generation_bf16(recipe, dev)   evaluation autocast: fp32 on the CPU, for numbers that do
                                   not depend on the CPU's instruction set
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.recipe import ModelConfig, Recipe


def resolve_device(cfg: ModelConfig) -> str:
    import torch

    if cfg.device != "auto":
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ModelError("model.device is cuda, but no CUDA GPU is visible. Use model.device=auto.")
        return cfg.device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cuda_native_bf16() -> bool:
    """Whether the GPU computes bf16 in hardware (Ampere and later). torch's plain
    `is_bf16_supported()` also counts emulation, which a T4 or V100 runs many times slower than
    fp16: those train in fp16 with loss scaling instead."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(cfg: ModelConfig, device: str) -> Any:
    """Weights dtype: bf16 on a GPU that computes bf16 natively; float32 elsewhere: on the CPU,
    where training still gets bf16 speed through autocast (train.mixed_precision) while master
    weights stay exact, and on older GPUs, whose fp16 training needs fp32 master weights."""
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device == "cuda" and cuda_native_bf16():
        return torch.bfloat16
    return torch.float32


def attention_implementation(cfg: ModelConfig, device: str) -> str | None:
    """model.attn_implementation; `auto`: flash-attention-2 on a CUDA GPU of the Ampere generation or
    later (the ones it supports) when the flash_attn package is installed (its varlen kernel serves
    packed rows), else None: transformers' default, SDPA."""
    import importlib.util

    choice = cfg.attn_implementation
    if choice == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ModelError("model.attn_implementation flash_attention_2 needs the flash_attn package "
                         "(pip install flash-attn, CUDA only); or use auto or sdpa.")
    if choice == "flash_attention_2" and device != "cuda":
        raise ModelError(f"model.attn_implementation flash_attention_2 runs on CUDA only (this is {device}); "
                         "use auto or sdpa.")
    if choice != "auto":
        return choice
    if device == "cuda" and cuda_native_bf16() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"  # Ampere and later: flash-attention-2 runs in bf16 / fp16 only there
    return None


def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AMX-BF16 or AVX512-BF16, Arm BF16). Elsewhere
    oneDNN emulates bf16 and autocast is slower than fp32. Honours ONEDNN_MAX_CPU_ISA, so a
    machine limited to, say, AVX2 decides as such a CPU would."""
    import re

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa not in ("", "ALL", "DEFAULT") and "BF16" not in isa and "AMX" not in isa:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: stay with fp32, which is never the slow choice
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags)
                or re.search(r"^Features\s*:.*\bbf16\b", flags, re.MULTILINE))


def mixed_precision(recipe: Recipe, device: str) -> str:
    """bf16 autocast where it pays: CUDA with bf16 support, and CPUs that compute bf16 natively
    (bench/precision.py, SmolLM2 LoRA: 1.60x fp32 with AMX / AVX512-BF16, but 0.49x with AVX-512
    alone and far slower on AVX2, where bf16 is emulated); fp16 on older GPUs; none on MPS."""
    choice = recipe.train.mixed_precision
    if choice != "auto":
        return choice
    if device == "cuda":
        return "bf16" if cuda_native_bf16() else "fp16"
    return "bf16" if device == "cpu" and cpu_native_bf16() else "no"


def compute_dtype(precision: str) -> Any:
    """The dtype matmuls run in for a mixed-precision setting (QLoRA's 4-bit layers compute in it)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def generation_bf16(recipe: Recipe, device: str) -> bool:
    """Whether answers are generated under bf16 autocast (see eval.precision)."""
    if recipe.eval.precision != "auto":
        return recipe.eval.precision == "bf16"
    return device == "cuda" and cuda_native_bf16()


def peak_memory(device: str) -> int | None:
    """Peak memory so far: the GPU's allocated peak on CUDA; else this process's peak resident
    memory. On Linux that is /proc/self/status VmHWM, the high-water mark of this program's own
    memory: `ru_maxrss` is not, since the kernel carries the parent's resident size over a
    fork + exec (a child of a 1.8 GB pytest reported 1.8 GB whatever it did)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def visible_devices() -> list[str]:
    """Every GPU this process can see (cuda:0 ... cuda:k-1), or the CPU: where local worker
    processes (tune --processes, eval --processes) go, one device each, round robin."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def pinned(device: str) -> dict[str, str]:
    """The environment that gives a worker process `device` alone: cuda:3 -> CUDA_VISIBLE_DEVICES=3
    (inside it, "cuda" is that GPU); cpu -> no GPU at all."""
    if device.startswith("cuda"):
        return {"CUDA_VISIBLE_DEVICES": device.partition(":")[2] or "0"}
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    raise ModelError(f"{device!r} is not a device for a worker; give cpu or cuda:N.")
