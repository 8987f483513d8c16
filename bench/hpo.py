"""Full grid vs TPE + pruning on the demo task, in one process run.

    .venv/bin/python bench/hpo.py [--steps 20] [--tpe-trials 4]

Both search the demo recipe's space (learning rate x LoRA rank; the grid takes the 4 x 2
listed values, TPE samples the learning rate on a log scale) with short trials on the embedded
SmolLM2 (`--steps` optimizer steps of 4 examples, validation loss every 5 steps). Prints, for
each, the trials run and pruned, compute used (training steps and trial-epochs = examples seen
/ training rows), the best validation loss, and TPE's ratios to the grid.
Goal: TPE + pruning within 1% of the grid's best loss with <= 1/3 of its compute.
"""

from __future__ import annotations

import argparse
import tempfile
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunesmith import tune
from tunesmith.demo import tickets
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run, read_json


def search(recipe_path: str, out: Path, paths: dict, steps: int, strategy: str, pruner: str,
           trials: int) -> dict:
    recipe = load_recipe(recipe_path, [
        f"data.train={paths['train']}", f"data.test={paths['test']}", f"data.eval_sets.ood={paths['ood']}",
        f"output.dir={out}", f"name=hpo-{strategy}", f"train.max_steps={steps}", "train.eval_steps=5",
        f"tune.strategy={strategy}", f"tune.pruner={pruner}", f"tune.trials={trials}",
        "tune.startup_trials=2"])
    run_dir = open_run(recipe)
    tune.run(recipe, run_dir)
    summary = read_json(run_dir.root / "tune" / "summary.json")
    train_rows = read_json(run_dir.data / "report.json")["splits"]["train"]
    summary["trial_epochs"] = summary["training_steps_used"] * recipe.train.batch_size / train_rows
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tpe-trials", type=int, default=4)
    args = parser.parse_args()
    recipe_path = str(files("tunesmith.demo") / "recipe.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        paths = tickets.write(out / "data")
        grid = search(recipe_path, out, paths, args.steps, "grid", "none", 8)
        tpe = search(recipe_path, out, paths, args.steps, "bayesian", "median", args.tpe_trials)
    table = Table(title=f"demo task, {args.steps}-step trials on SmolLM2-135M (LoRA)")
    for column in ("search", "trials", "pruned", "training steps", "trial-epochs", "best val loss", "best"):
        table.add_column(column)
    for name, s in (("full grid (4 lr x 2 r)", grid), ("TPE + median pruning", tpe)):
        table.add_row(name, str(s["trials"]), str(s["pruned"]), str(s["training_steps_used"]),
                      f"{s['trial_epochs']:.2f}", f"{s['best_value']:.4f}", str(s["best_params"]))
    console = Console(width=160)
    console.print(table)
    loss_ratio = tpe["best_value"] / grid["best_value"]
    compute_ratio = tpe["training_steps_used"] / grid["training_steps_used"]
    console.print(f"TPE best loss / grid best loss = {loss_ratio:.3f} (goal <= 1.01); "
                  f"compute ratio = {compute_ratio:.2f} (goal <= 0.33)")


if __name__ == "__main__":
    main()
