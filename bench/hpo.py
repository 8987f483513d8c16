"""Full grid vs TPE + pruning on the demo task, in one process run.

    .venv/bin/python bench/hpo.py [--steps 20]

Both search one space on the demo recipe, with short trials on the embedded SmolLM2 (`--steps`
optimizer steps of 4 examples, validation loss every 5 steps):

    train.lr            log-uniform 1e-4 .. 5e-3   grid: 1e-4 2e-4 5e-4 1e-3 2e-3 5e-3
    train.lora.r        4 | 16
    train.lora.dropout  0.0 | 0.1

The grid trains all 24 combinations to the end. TPE (multivariate, the recipe's default start-up
trials, learning rate sampled on the continuous log scale) with median pruning gets a compute
budget of a third of the grid's optimizer steps (`tune.max_training_steps`; a trial starts only
while a full-length one still fits). Prints, for each, the trials run and pruned, compute
(optimizer steps and trial-epochs = examples seen / training rows), wall time and the best
validation loss, then TPE's ratios to the grid.
Goal: TPE + pruning within 1% of the grid's best loss with <= 1/3 of its compute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunesmith import tune
from tunesmith.demo import tickets
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run, read_json

SPACE = ("{train.lr: {type: float, low: 1.0e-4, high: 5.0e-3, log: true, "
         "grid: [1.0e-4, 2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 5.0e-3]}, "
         "train.lora.r: {type: categorical, choices: [4, 16]}, "
         "train.lora.dropout: {type: categorical, choices: [0.0, 0.1]}}")


def search(out: Path, paths: dict, steps: int, strategy: str, pruner: str, budget: str) -> dict:
    recipe = load_recipe(str(files("tunesmith.demo") / "recipe.yaml"), [
        f"data.train={paths['train']}", f"data.test={paths['test']}", f"data.eval_sets.ood={paths['ood']}",
        f"output.dir={out}", f"name=hpo-{strategy}", f"train.max_steps={steps}", "train.eval_steps=5",
        f"tune.space={SPACE}", f"tune.strategy={strategy}", f"tune.pruner={pruner}", *budget])
    run_dir = open_run(recipe)
    started = time.time()
    tune.run(recipe, run_dir)
    summary = read_json(run_dir.root / "tune" / "summary.json")
    summary["wall"] = time.time() - started
    train_rows = read_json(run_dir.data / "report.json")["splits"]["train"]
    summary["trial_epochs"] = summary["training_steps_used"] * recipe.train.batch_size / train_rows
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        paths = tickets.write(out / "data")
        grid = search(out, paths, args.steps, "grid", "none", ["tune.trials=null"])
        third = grid["training_steps_used"] // 3
        tpe = search(out, paths, args.steps, "bayesian", "median",
                     ["tune.trials=null", f"tune.max_training_steps={third}"])
    table = Table(title=f"demo task, {args.steps}-step trials on SmolLM2-135M (LoRA)")
    for column in ("search", "trials", "pruned", "steps", "trial-epochs", "wall", "best val loss", "best"):
        table.add_column(column)
    for name, s in (("full grid (6 lr x 2 r x 2 dropout)", grid), ("TPE + median pruning", tpe)):
        best = ", ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in s["best_params"].items())
        table.add_row(name, str(s["trials"]), str(s["pruned"]), str(s["training_steps_used"]),
                      f"{s['trial_epochs']:.2f}", f"{s['wall'] / 60:.1f} min", f"{s['best_value']:.4f}", best)
    console = Console(width=160)
    console.print(table)
    loss_ratio = tpe["best_value"] / grid["best_value"]
    compute_ratio = tpe["training_steps_used"] / grid["training_steps_used"]
    console.print(f"TPE best loss / grid best loss = {loss_ratio:.4f} (goal <= 1.01); "
                  f"compute ratio = {compute_ratio:.3f} (goal <= 0.333)")


if __name__ == "__main__":
    main()
