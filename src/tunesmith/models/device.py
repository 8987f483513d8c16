"""Where a model runs and in which precision, decided per device from measurements.

    resolve_device(cfg)            cuda, then Apple mps, then cpu (or the recipe's choice)
    resolve_dtype(cfg, device)     weights: bf16 on a GPU that supports it, fp32 otherwise
    mixed_precision(recipe, dev)   training autocast: bf16 where the hardware computes bf16
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


def resolve_dtype(cfg: ModelConfig, device: str) -> Any:
    """Weights dtype: bf16 on a GPU that supports it; float32 on the CPU, where training still
    gets bf16 speed through autocast (train.mixed_precision) while master weights stay exact."""
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


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
    import torch

    choice = recipe.train.mixed_precision
    if choice != "auto":
        return choice
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device == "cpu" and cpu_native_bf16() else "no"


def generation_bf16(recipe: Recipe, device: str) -> bool:
    """Whether answers are generated under bf16 autocast (see eval.precision)."""
    import torch

    if recipe.eval.precision != "auto":
        return recipe.eval.precision == "bf16"
    return device == "cuda" and torch.cuda.is_bf16_supported()


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
