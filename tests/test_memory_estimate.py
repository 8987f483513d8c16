"""The training-memory estimate against measured peaks on this CPU: a few training steps in a fresh
process (bench/memory.py's measurement: transformers + PEFT, AdamW, bf16 autocast), its peak
resident memory vs `advisor.training_memory` for the same model, method and shape."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "memory.py"


def _measure(spec: dict) -> dict:
    module_spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    bench = importlib.util.module_from_spec(module_spec)
    sys.modules.setdefault("bench_memory", bench)
    module_spec.loader.exec_module(bench)
    return bench.run_one(spec)


@pytest.mark.parametrize("spec", [
    {"family": "causal_lm", "method": "lora", "seq": 128, "batch": 4},  # the tiny Llama
    {"model": "embedded:smollm2-135m-instruct", "family": "causal_lm", "method": "lora", "seq": 256,
     "batch": 4},
    {"model": "embedded:all-minilm-l6-v2", "family": "encoder", "method": "full", "seq": 128, "batch": 16},
], ids=["tiny-llama-lora", "smollm2-135m-lora", "minilm-full"])
def test_training_memory_estimate_is_within_25_percent_of_the_measured_peak(spec, tiny_model_dir):
    result = _measure({"model": str(tiny_model_dir), **spec})
    measured, estimate = result["peak_bytes"] / 2**20, result["estimate_bytes"] / 2**20
    print(f"\n{spec.get('model', 'tiny')}: measured {measured:,.0f} MiB, estimated {estimate:,.0f} MiB")
    assert 0.75 <= result["ratio"] <= 1.25, result["estimate"]
