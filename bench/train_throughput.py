"""Training throughput (issue 14, part 1): TRL's SFTTrainer with its defaults, TRL with bf16, and
`tunesmith train` (compiled, eager, and eager with padding-free packing), each in a fresh process
on the same rows, in one run of this script.

    .venv/bin/python bench/train_throughput.py [--rows 64] [--epochs 2] [--data alpaca|demo]
                                               [--trainers tunesmith-eager,tunesmith-packed]

Setup (as the issue states it): the first `--rows` rows of ../shared/fixtures/real/alpaca_en_demo.json
(or the demo's tickets), SmolLM2-135M-Instruct (the embedded model), LoRA r=16 alpha=32 on all
linear layers, batch 8, max_length 512, `--epochs` passes over the rows (8 steps each for 64 rows).
Each trainer sees the same rows in each pass (in its own order: tunesmith groups them by length),
so both windows below hold the same tokens for every trainer. Printed per trainer:
- real tokens/s (non-padding tokens) end to end over the first pass (from the first step's start:
  warm-up and any compilation included), and in steady state over the last pass;
- warm-up: the first pass's time beyond what its tokens take at the steady rate (compilation and
  first-call kernel selection);
- the mean logged training loss over all steps, on the answer tokens for all (TRL gets the rows
  as prompt / completion pairs, so it scores the completion only, as tunesmith scores the
  assistant's turn); it depends on the order of the batches, which differs between trainers;
- the loss after training on the same tokens, order-free: each trainer's saved adapter on a fresh
  fp32 base, token-weighted answer loss over all the rows (the issue's equal-loss check);
- peak resident memory of the process;
- achieved GFLOP/s (LoRA: ~4 x parameters per trained token: the forward pass and the backward
  pass through the activations) and that as a share of a 2048 x 2048 matmul's bf16 and fp32
  throughput measured in the same run (MFU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "fixtures" / "real" / "alpaca_en_demo.json"
MODEL = "embedded:smollm2-135m-instruct"
TRAINERS = ("trl-defaults", "trl-bf16", "tunesmith-eager", "tunesmith", "tunesmith-packed")
"""tunesmith-eager is tunesmith with train.compile=false; tunesmith compiles its layers;
tunesmith-packed is tunesmith-eager with train.packing=true (the rows of a pass packed into rows of
up to 512 tokens: fewer, fuller steps per pass, the same tokens)."""


def rows(source: str, count: int) -> list[dict]:
    """Chat rows: alpaca instruction (+ input) -> output, or the demo's tickets."""
    if source == "demo":
        from tunesmith.demo.tickets import write

        paths = write(tempfile.mkdtemp())
        data = []
        for line in Path(paths["train"]).read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # the demo plants broken rows
                data.append(json.loads(line))
        return [{"messages": r["messages"]} for r in data if isinstance(r, dict) and "messages" in r][:count]
    data = json.loads(ALPACA.read_text())[:count]
    def prompt(row: dict) -> str:
        return "\n\n".join(part for part in (row["instruction"], row["input"]) if part)

    return [{"messages": [{"role": "user", "content": prompt(r)},
                          {"role": "assistant", "content": r["output"]}]} for r in data]


def matmul_gflops(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """The best of five timed 2048 x 2048 matmuls after three warm-up ones (oneDNN's first calls
    pick kernels), in GFLOP/s."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


class Clock:
    """A TrainerCallback recording each step's end time, tokens seen and logged loss."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self) -> None:
                self.begin, self.steps, self.losses = None, [], []

            def on_train_begin(self, args, state, control, **kwargs):
                self.begin = time.perf_counter()  # as tunesmith's progress log starts its clock

            def on_step_end(self, args, state, control, **kwargs):
                self.steps.append((time.perf_counter(), state.num_input_tokens_seen))

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))

        return _Clock()


def run_trl(data: list[dict], steps: int, bf16: bool) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.loading import model_location
    from tunesmith.recipe import ModelConfig

    location = model_location(ModelConfig(name=MODEL))
    model = AutoModelForCausalLM.from_pretrained(location)
    tokenizer = AutoTokenizer.from_pretrained(location)
    clock = Clock()
    # TRL refuses its bf16 default on a CPU: "defaults" there means fp32
    extra = {"bf16": True, "use_cpu": True} if bf16 else {"bf16": False}
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_length=512,
                     max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", seed=42,
                     disable_tqdm=True, include_num_input_tokens_seen="non_padding", **extra)
    # prompt / completion rows: TRL then scores the answer only, as tunesmith does (loss_on: assistant)
    pairs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in data]
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                         processing_class=tokenizer, callbacks=[clock],
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.train()
    adapter = tempfile.mkdtemp()
    trainer.model.save_pretrained(adapter)
    return {"begin": clock.begin, "steps": clock.steps, "losses": clock.losses, "adapter": adapter}


def bench_recipe(data: list[dict], *extra: str) -> Any:
    """The benches' recipe for `data` (written to a scratch directory): SmolLM2, every row trained
    (no held-out sets, no filters, no dedup), LoRA r=16 alpha=32, batch 8, max_length 512, a log
    entry every step; `extra` overrides on top."""
    from tunesmith.recipe import load_recipe

    work = Path(tempfile.mkdtemp())
    train = work / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in data))
    return load_recipe(None, [f"model.name={MODEL}", f"data.train={train}", "data.val_fraction=0",
                              "data.test_fraction=0", "data.dedup.exact=false", "data.dedup.near=false",
                              "data.filters.enabled=false", "data.leakage.action=flag",
                              "train.batch_size=8", "train.max_length=512", "train.logging_steps=1",
                              "train.lora.r=16", "train.lora.alpha=32", "monitor.enabled=false",
                              f"output.dir={work / 'runs'}", "name=bench", *extra])


def run_tunesmith(data: list[dict], steps: int, compile_layers: bool, packing: bool = False,
                  epochs: int = 2) -> dict:
    from tunesmith import pipeline

    recipe = bench_recipe(data,
                          # packed: whole passes (their steps are fewer), else the same steps
                          f"train.epochs={epochs}" if packing else f"train.max_steps={steps}",
                          f"train.packing={str(packing).lower()}",
                          f"train.compile={str(compile_layers).lower()}")
    started = time.perf_counter()
    pipeline.fine_tune(recipe)
    log = [json.loads(line) for line in (recipe.run_dir / "train" / "log.jsonl").read_text().splitlines()]
    logged = [e for e in log if "loss" in e and "time" in e]
    # log times are wall-clock; rebase them on this process's perf_counter. The progress log's
    # clock starts at on_train_begin: its first entry's tokens / tokens_per_second go back to it.
    offset = time.perf_counter() - time.time()
    first = logged[0]
    begin = first["time"] + offset - first["tokens_seen"] / max(first.get("tokens_per_second") or 0, 1e-9)
    return {"begin": max(begin, started), "steps": [(e["time"] + offset, e["tokens_seen"]) for e in logged],
            "losses": [e["loss"] for e in logged], "adapter": str(recipe.run_dir / "model"),
            "pass_steps": len(logged) // epochs}


def final_loss(adapter: str, data: list[dict]) -> float:
    """The trained adapter's loss on the answer tokens of all the rows, token-weighted, measured
    the same way for every trainer: a fresh fp32 base + the saved adapter, no dropout."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.chat import tokenize_record
    from tunesmith.models.loading import model_location
    from tunesmith.recipe import ModelConfig
    from tunesmith.train.sft_backend import AnswerCollator, answer_loss

    location = model_location(ModelConfig(name=MODEL))
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(location), adapter).eval()
    rows = [tokenize_record(tokenizer, r, "assistant", 512, None) for r in data]
    collate = AnswerCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 8):
            batch = collate(rows[start:start + 8])
            total += float(answer_loss(model, batch, attention_mask=True)[0])
            count += int((batch["labels"][:, 1:] != -100).sum())
    return total / count


def measure(trainer: str, source: str, count: int, steps: int, epochs: int = 2) -> dict:
    import torch

    torch.manual_seed(0)
    data = rows(source, count)
    if trainer.startswith("tunesmith"):
        result = run_tunesmith(data, steps, compile_layers=trainer == "tunesmith",
                               packing=trainer == "tunesmith-packed", epochs=epochs)
    else:
        result = run_trl(data, steps, bf16=trainer == "trl-bf16")
    from tunesmith.models.device import peak_memory

    result["peak_rss"] = peak_memory("cpu")  # before the final-loss pass below
    result["final_loss"] = final_loss(result.pop("adapter"), data)
    result["params"] = 134.5e6
    return result


def summarise(result: dict, pass_steps: int) -> dict:
    """End to end over the first pass (its first `pass_steps` steps), steady over the last pass."""
    steps = result["steps"]
    first_end, first_tokens = steps[pass_steps - 1]
    last_start, last_start_tokens = steps[-pass_steps - 1]
    end, tokens = steps[-1]
    steady = (tokens - last_start_tokens) / (end - last_start)
    first_seconds = first_end - result["begin"]
    return {"end_to_end": first_tokens / first_seconds, "steady": steady,
            "warmup_seconds": first_seconds - first_tokens / steady,
            "loss": sum(result["losses"]) / len(result["losses"]) if result["losses"] else float("nan"),
            "final_loss": result["final_loss"],
            "peak_gib": result["peak_rss"] / 2 ** 30, "tokens": tokens, "params": result["params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", choices=["alpaca", "demo"], default="alpaca")
    parser.add_argument("--trainers", default=",".join(TRAINERS),
                        help="comma-separated subset of: " + ", ".join(TRAINERS))
    parser.add_argument("--one", choices=TRAINERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data, args.rows, args.steps, args.epochs)))
        return
    chosen = [t for t in args.trainers.split(",") if t]
    if not chosen or set(chosen) - set(TRAINERS):
        raise SystemExit(f"--trainers: choose from {', '.join(TRAINERS)}")
    pass_steps = -(-args.rows // 8)
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the last pass is the steady state")
    from rich.console import Console
    from rich.table import Table

    peaks = {"bf16": matmul_gflops("bfloat16"), "fp32": matmul_gflops("float32")}
    results = {}
    for trainer in chosen:
        # a fresh inductor cache per run: compile time is measured cold, as on a first run
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-")}
        done = subprocess.run([sys.executable, __file__, "--one", trainer, "--data", args.data, "--rows",
                               str(args.rows), "--steps", str(pass_steps * args.epochs),
                               "--epochs", str(args.epochs)],
                              capture_output=True, text=True, timeout=3600, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{trainer} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results[trainer] = summarise(result, result.get("pass_steps") or pass_steps)
    base = results.get("trl-defaults") or results[chosen[0]]
    bf16 = results.get("trl-bf16") or base
    table = Table(title=f"training throughput, {args.data} ({args.rows} rows, batch 8, {args.epochs} passes "
                        f"of {pass_steps} steps; end to end = first pass, steady = last pass); matmul peak "
                        f"bf16 {peaks['bf16']:.0f}, fp32 {peaks['fp32']:.0f} GFLOP/s")
    for column in ("trainer", "tok/s end to end", "tok/s steady", "warm-up s",
                   f"vs {'TRL defaults' if 'trl-defaults' in results else chosen[0]} (steady / e2e)",
                   f"vs {'TRL + bf16' if 'trl-bf16' in results else chosen[0]} (steady / e2e)",
                   "mean logged loss", "loss after training", "peak RSS",
                   "GFLOP/s", "MFU bf16 / fp32"):
        table.add_column(column)
    for trainer, r in results.items():
        gflops = r["steady"] * 4 * r["params"] / 1e9
        table.add_row(trainer, f"{r['end_to_end']:.1f}", f"{r['steady']:.1f}", f"{r['warmup_seconds']:.1f}",
                      f"{r['steady'] / base['steady']:.2f}x / {r['end_to_end'] / base['end_to_end']:.2f}x",
                      f"{r['steady'] / bf16['steady']:.2f}x / {r['end_to_end'] / bf16['end_to_end']:.2f}x",
                      f"{r['loss']:.4f}", f"{r['final_loss']:.4f}", f"{r['peak_gib']:.2f} GiB",
                      f"{gflops:.0f}",
                      f"{100 * gflops / peaks['bf16']:.1f}% / {100 * gflops / peaks['fp32']:.1f}%")
    Console(width=200).print(table)
    out = REPO / "bench-out"
    out.mkdir(exist_ok=True)
    (out / f"train_throughput_{args.data}.json").write_text(json.dumps({"peaks": peaks, **results}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
