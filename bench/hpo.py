"""Full grid vs TPE + pruning on the demo task, in one process run.

    .venv/bin/python bench/hpo.py [--steps 20] [--replays 50]

One space on the demo recipe, short trials on the embedded SmolLM2 (`--steps` optimizer steps of
4 examples, validation loss every 5 steps):

    train.lr            log-uniform 1e-4 .. 5e-3   grid: 1e-4 2e-4 5e-4 1e-3 2e-3 5e-3
    train.lora.r        4 | 16
    train.lora.dropout  0.0 | 0.1

1. The full grid trains all 24 combinations to the end.
2. TPE (multivariate, the recipe's default start-up trials, the learning rate on the continuous log
   scale) with median pruning trains live with a compute budget of a third of the grid's
   optimizer steps (`tune.max_training_steps`: a trial starts only while a full-length one fits).
3. One live run depends on the sampler's seed, so TPE + median pruning on the grid's own 24
   points is also replayed for `--replays` seeds from the grid's recorded validation losses
   (every 5 steps, so a replayed trial is pruned at the step and with the loss the live one
   would be; training is seeded and deterministic, which the bench checks by training the
   grid's best point again). Same budget, same sampler, pruner and repeat handling as
   `tunesmith tune`, imported from tunesmith.tune.

Prints compute (optimizer steps, trial-epochs = examples seen / training rows), wall time and the
best validation loss of each, and TPE's ratios to the grid.
Goal: TPE + pruning within 1% of the grid's best loss with <= 1/3 of its compute.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from importlib.resources import files
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from tunesmith import data, train, tune
from tunesmith.artifacts import DataReport, TuneSummary, dump, load
from tunesmith.demo import tickets
from tunesmith.recipe import ParamSpace, Recipe, load_recipe
from tunesmith.rundir import RunDir, open_run

SPACE = ("{train.lr: {type: float, low: 1.0e-4, high: 5.0e-3, log: true, "
         "grid: [1.0e-4, 2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 5.0e-3]}, "
         "train.lora.r: {type: categorical, choices: [4, 16]}, "
         "train.lora.dropout: {type: categorical, choices: [0.0, 0.1]}}")


def demo_recipe(out: Path, paths: dict, steps: int, strategy: str, pruner: str, *extra: str) -> Recipe:
    return load_recipe(str(files("tunesmith.demo") / "recipe.yaml"), [
        f"data.train={paths['train']}", f"data.test={paths['test']}", f"data.eval_sets.ood={paths['ood']}",
        f"output.dir={out}", f"name=hpo-{strategy}", f"train.max_steps={steps}", "train.eval_steps=5",
        f"tune.space={SPACE}", f"tune.strategy={strategy}", f"tune.pruner={pruner}", "tune.trials=null",
        *extra])


def search(recipe: Recipe) -> tuple[dict, object]:
    run_dir = open_run(recipe)
    result = tune.run(recipe, run_dir)
    summary = dump(load(TuneSummary, run_dir.tune_summary))
    summary["train_rows"] = load(DataReport, run_dir.data_report).splits["train"]
    return summary, result.study


def replay(table: dict, cfg, budget: int, max_steps: int, seed: int) -> dict:
    """TPE + pruning over the grid's points, answered from the grid's recorded losses."""
    import optuna

    cfg = cfg.model_copy(update={"seed": seed, "space": {
        k: ParamSpace(type="categorical", choices=s.grid_values()) for k, s in cfg.space.items()}})

    def objective(trial):
        params = tune.suggest(trial, cfg)
        if (done := tune.repeat_of(trial, params)) is not None:
            trial.set_user_attr("steps", 0)
            return done.value
        recorded = table[tuple(sorted(params.items()))]
        for step, loss in sorted(recorded.intermediate_values.items()):
            if tune.report(trial, loss, step, recorded.user_attrs["steps"]):
                trial.set_user_attr("steps", step)
                raise optuna.TrialPruned()
        trial.set_user_attr("steps", recorded.user_attrs["steps"])
        return recorded.value

    study = optuna.create_study(sampler=tune.sampler(cfg), pruner=tune.pruner(cfg), direction=cfg.direction)
    step_budget = tune.StepBudget(budget, max_steps)
    study.optimize(objective, callbacks=[step_budget])
    return {"best_value": study.best_value, "steps": tune.steps_used(study), "trials": len(study.trials)}


def main() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--replays", type=int, default=50)
    args = parser.parse_args()
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        paths = tickets.write(out / "data")
        grid, grid_study = search(demo_recipe(out, paths, args.steps, "grid", "none"))
        third = grid["training_steps_used"] // 3
        tpe_recipe = demo_recipe(out, paths, args.steps, "bayesian", "median",
                                 f"tune.max_training_steps={third}")
        tpe, _ = search(tpe_recipe)
        # determinism check: the grid's best point trained again gives the same validation loss
        again = tune.trial_recipe(tpe_recipe, grid["best_params"], "again", out)
        splits = data.load_splits(RunDir(out / "hpo-grid"))
        again_loss = train.run(again, RunDir(out / "again"), splits=splits).final_eval_loss
    table = {tuple(sorted(t.params.items())): t for t in grid_study.get_trials(states=(TrialState.COMPLETE,))}
    replays = [replay(table, tpe_recipe.tune, third, args.steps, seed) for seed in range(args.replays)]

    result = Table(title=f"demo task, {args.steps}-step trials on SmolLM2-135M (LoRA), "
                         f"TPE budget {third} steps = 1/3 of the grid")
    for column in ("search", "trials", "pruned", "steps", "trial-epochs", "wall", "best val loss", "/ grid",
                   "best values"):
        result.add_column(column)
    epochs = tpe_recipe.train.batch_size / grid["train_rows"]  # trial-epochs per optimizer step
    for name, s in (("full grid (6 lr x 2 r x 2 dropout)", grid), ("TPE + median pruning, live", tpe)):
        best = ", ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in s["best_params"].items())
        result.add_row(name, str(s["trials"]), str(s["pruned"]), str(s["training_steps_used"]),
                       f"{s['training_steps_used'] * epochs:.2f}", f"{s['seconds'] / 60:.1f} min",
                       f"{s['best_value']:.4f}", f"{s['best_value'] / grid['best_value']:.4f}", best)
    ratios = [r["best_value"] / grid["best_value"] for r in replays]
    steps = [r["steps"] for r in replays]
    result.add_row(f"TPE + median pruning on the grid points, {len(replays)} seeds replayed",
                   f"{statistics.median(r['trials'] for r in replays):.0f} (median)", "",
                   f"{statistics.median(steps):.0f} (median), {max(steps)} (max)",
                   f"{statistics.median(steps) * epochs:.2f}", "", "",
                   f"{statistics.median(ratios):.4f} (median), {max(ratios):.4f} (worst)",
                   f"{sum(r <= 1.01 for r in ratios)} of {len(ratios)} seeds within 1%")
    console.print(result)
    console.print(f"determinism: the grid's best point trained again: {again_loss:.6f} vs "
                  f"{grid['best_value']:.6f} recorded")
    console.print(f"live TPE: best loss / grid best = {tpe['best_value'] / grid['best_value']:.4f} "
                  f"(goal <= 1.01), compute = {tpe['training_steps_used'] / grid['training_steps_used']:.3f} "
                  "of the grid's (goal <= 0.333)")


if __name__ == "__main__":
    main()
