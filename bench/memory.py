"""The memory estimator (`tunesmith.models.memory.training_memory`) against measured peaks on
this machine: each model trains a few steps in a fresh process (the stack tunesmith trains with:
transformers + PEFT, AdamW, bf16 autocast on the CPU), and the process's peak resident memory
(VmHWM: weights, gradients, optimizer states, activations, the framework) is compared with
the estimate for the same model, method, sequence length and batch.

    .venv/bin/python bench/memory.py                      # the three models below, a table
    .venv/bin/python bench/memory.py --one SPEC_JSON      # one measurement, JSON (tests use it)

tests/test_memory_estimate.py runs the same measurements and asserts every estimate is within
25% of its measured peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEPS = 3


def measure(spec: dict) -> dict:
    """Train `spec` for STEPS steps in this process; the peak RSS and the estimate."""
    import torch

    from tunesmith.models.catalog import entry_from_config, find
    from tunesmith.models.device import peak_memory
    from tunesmith.models.families import FAMILIES
    from tunesmith.models.loading import model_location
    from tunesmith.models.memory import training_memory
    from tunesmith.recipe import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(name=spec["model"], family=spec["family"])
    location = model_location(cfg)
    family = FAMILIES[spec["family"]]
    head = {"num_labels": 5} if spec["family"] == "encoder" else {}
    model = family.auto_class().from_pretrained(location, use_safetensors=True, **head)
    if spec["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type=family.peft_task_type))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch, seq = spec["batch"], spec["seq"]
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch, seq))
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if spec["family"] == "encoder":
                loss = model(input_ids=ids, labels=torch.zeros(batch, dtype=torch.long)).loss
            else:
                loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = peak_memory("cpu")  # VmHWM: ru_maxrss would carry a parent's size over fork + exec
    params = sum(p.numel() for p in model.parameters())
    if spec["method"] == "lora":
        params -= sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    entry = find(spec["model"]) or entry_from_config(spec["model"], spec["family"], model.config.to_dict(),
                                                      params)
    estimate = training_memory(entry, method=spec["method"], seq=seq, batch=batch, precision="autocast",
                               device="cpu")
    return {**spec, "peak_bytes": peak, "estimate_bytes": estimate.total,
            "ratio": estimate.total / peak, "estimate": vars(estimate)}


def run_one(spec: dict) -> dict:
    """`measure` in a fresh process: nothing another measurement loaded counts toward its peak."""
    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


SMOL, MINILM = "embedded:smollm2-135m-instruct", "embedded:all-minilm-l6-v2"
SPECS = [
    {"model": SMOL, "family": "causal_lm", "method": "lora", "seq": 256, "batch": 4},
    {"model": SMOL, "family": "causal_lm", "method": "lora", "seq": 128, "batch": 8},
    {"model": SMOL, "family": "causal_lm", "method": "lora", "seq": 512, "batch": 2},
    {"model": SMOL, "family": "causal_lm", "method": "full", "seq": 128, "batch": 4},
    {"model": MINILM, "family": "encoder", "method": "full", "seq": 128, "batch": 16},
    {"model": MINILM, "family": "encoder", "method": "full", "seq": 256, "batch": 32},
    {"model": MINILM, "family": "encoder", "method": "lora", "seq": 128, "batch": 16},
]
"""The test checks the first of each model (and a tiny Llama); the rest are here to show the
estimate is not tuned to one shape."""


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help="one measurement spec (JSON); prints the result as JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    table = Table(title=f"training memory: estimate vs measured peak RSS ({STEPS} steps, bf16 autocast, CPU)")
    for column in ("model", "method", "seq x batch", "measured", "estimate", "estimate / measured"):
        table.add_column(column)
    for spec in SPECS:
        result = run_one(spec)
        table.add_row(spec["model"], spec["method"], f"{spec['seq']} x {spec['batch']}",
                      f"{result['peak_bytes'] / 2**20:,.0f} MiB",
                      f"{result['estimate_bytes'] / 2**20:,.0f} MiB", f"{result['ratio']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
