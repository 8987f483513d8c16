"""fp32 vs bf16 autocast for LoRA training steps of the embedded SmolLM2, in one process.

    .venv/bin/python bench/precision.py [--steps 6] [--batch 8] [--length 96]

Decides `train.mixed_precision: auto` on the CPU. Each mode runs one warm-up step and then
`--steps` timed optimizer steps on the same random batch; prints tokens/s and the ratio.
Also times gradient checkpointing on/off (bf16), the other default chosen by measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import time


def steps_per_second(model, batch, steps: int, bf16: bool) -> float:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    timings = []
    for step in range(steps + 1):
        started = time.perf_counter()
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step warms caches and kernels
            timings.append(time.perf_counter() - started)
    return len(timings) / sum(timings)


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from rich.console import Console
    from rich.table import Table

    from tunesmith.models.loading import load_model
    from tunesmith.recipe import ModelConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=96)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(ModelConfig(device="cpu", dtype="float32"))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    batch = torch.randint(0, model.config.vocab_size, (args.batch, args.length))
    tokens = args.batch * args.length
    results = {}
    for name, bf16, checkpointing in (("fp32", False, False), ("bf16 autocast", True, False),
                                      ("bf16 + activation checkpointing", True, True)):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        results[name] = steps_per_second(model, batch, args.steps, bf16) * tokens

    table = Table(title=f"SmolLM2-135M LoRA, batch {args.batch} x {args.length} tokens, "
                        f"{torch.get_num_threads()} threads")
    table.add_column("mode")
    table.add_column("tokens/s", justify="right")
    table.add_column("vs fp32", justify="right")
    for name, speed in results.items():
        table.add_row(name, f"{speed:.0f}", f"{speed / results['fp32']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
