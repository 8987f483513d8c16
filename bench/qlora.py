"""QLoRA against LoRA on SmolLM2-135M (the embedded model): `tunesmith train` with train.method
lora and qlora, each in a fresh process on the same alpaca rows, in one run of this script.

    .venv/bin/python bench/qlora.py [--rows 32] [--epochs 2]

Setup: the first `--rows` rows of ../shared/fixtures/real/alpaca_en_demo.json, LoRA r=16 alpha=32
on all linear layers, batch 8, max_length 512, eager, `--epochs` passes. Printed per method:
- real tokens/s after the first step (the first selects kernels), from the training log;
- the base model's weights in memory as loaded (QLoRA: NF4 blocks of the linear layers, the
  embeddings and head unquantized) and the process's peak resident memory;
- the loss after training on the same tokens: each run's adapter on its base as evaluation loads
  it (QLoRA: the 4-bit base dequantized), token-weighted answer loss over all the rows.
On a GPU the same script measures the GPU's (CUDA) peak instead of the process's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
METHODS = ("lora", "qlora")


def measure(method: str, count: int, epochs: int) -> dict:
    import torch
    from train_throughput import bench_recipe, rows

    from tunesmith import pipeline
    from tunesmith.models.device import peak_memory, resolve_device
    from tunesmith.models.loading import load_model, load_run_model
    from tunesmith.train.sft_backend import AnswerCollator, answer_loss

    torch.manual_seed(0)
    data = rows("alpaca", count)
    recipe = bench_recipe(data, f"train.epochs={epochs}", "train.compile=false", f"train.method={method}")
    device = resolve_device(recipe.model)
    from tunesmith.models.device import compute_dtype, mixed_precision

    pipeline.fine_tune(recipe)
    peak = peak_memory(device)  # before anything else is loaded in this process
    log = [json.loads(line) for line in (recipe.run_dir / "train" / "log.jsonl").read_text().splitlines()]
    logged = [e for e in log if "loss" in e and "time" in e]
    first, last = logged[0], logged[-1]
    rate = (last["tokens_seen"] - first["tokens_seen"]) / (last["time"] - first["time"])
    quantize = compute_dtype(mixed_precision(recipe, device)) if method == "qlora" else None
    base = load_model(recipe.model, None, device, quantize=quantize)
    weights = base.get_memory_footprint()
    del base
    tuned = load_run_model(recipe.model, method, recipe.run_dir / "model")
    from tunesmith.models.chat import training_rows

    tokenized = training_rows(tuned.tokenizer, [{**r, "meta": {}} for r in data], recipe.train, None)
    collate = AnswerCollator(tuned.tokenizer.pad_token_id)
    total, count_tokens = 0.0, 0
    model = tuned.model.eval()
    with torch.no_grad():
        for start in range(0, len(tokenized), 8):
            batch = collate(tokenized[start:start + 8])
            total += float(answer_loss(model, batch, attention_mask=True)[0])
            count_tokens += int((batch["labels"][:, 1:] != -100).sum())
    return {"method": method, "tokens_per_second": rate, "weights_bytes": weights, "peak_bytes": peak,
            "final_loss": total / count_tokens, "tokens": last["tokens_seen"], "steps": last["step"],
            "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.rows, args.epochs)))
        return
    from rich.console import Console
    from rich.table import Table

    results = {}
    for method in METHODS:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--one", method, "--rows", str(args.rows),
                               "--epochs", str(args.epochs)], capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
        results[method] = {**json.loads(done.stdout.strip().splitlines()[-1]),
                           "wall_seconds": time.perf_counter() - started}
    lora = results["lora"]
    table = Table(title=f"QLoRA vs LoRA, SmolLM2-135M, alpaca ({args.rows} rows, batch 8, "
                        f"{args.epochs} passes, {lora['device']})")
    for column in ("method", "tok/s", "vs LoRA", "base weights", "peak memory", "loss after training",
                   "tokens", "steps"):
        table.add_column(column)
    for method, r in results.items():
        ratio = r["tokens_per_second"] / lora["tokens_per_second"]
        table.add_row(method, f"{r['tokens_per_second']:.1f}", f"{ratio:.2f}x",
                      f"{r['weights_bytes'] / 2**20:,.0f} MiB", f"{r['peak_bytes'] / 2**30:.2f} GiB",
                      f"{r['final_loss']:.4f}", f"{r['tokens']:,}", str(r["steps"]))
    Console(width=160).print(table)
    out = REPO / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "qlora.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
