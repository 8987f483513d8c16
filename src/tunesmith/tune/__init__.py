"""The tune stage: hyperparameter search around train.run, on Optuna.

    tunesmith tune recipes/demo.yaml                         # study in SQLite in the run dir
    tunesmith tune RECIPE --storage postgresql://u@host/db --study demo   # one of many workers

Every trial is a full training run with the trial's values written into the recipe (any
recipe key can be searched, `tune.space`), scored by its validation loss. Strategies: grid
(every combination), random, bayesian (multivariate TPE). The median or Hyperband pruner
stops a trial early on the validation loss it reports while training (never at its last
evaluation). Budgets: trials, wall time, and optimizer steps over the whole study
(`tune.max_training_steps`); values a completed trial already had are answered from the study
instead of trained again. With `tune.cv_folds:
k` a trial is scored as the mean over k folds of train (std recorded), and the best values
are then retrained on all of train and evaluated once on test. Workers on several machines
share a study through an RDB storage; each beats a heartbeat, and a trial whose worker dies
is failed and retried by the next worker. Writes `tune/trials.csv`, `tune/best.yaml` (a
complete recipe that replays the best trial: `tunesmith run tune/best.yaml`), figures and
`tune/summary.json` (for the report and the model card).

    space.py      what a trial tries: space, sampler, pruner, the trial's recipe
    objective.py  how a trial is scored (validation loss, or k-fold cross-validation)
    budget.py     the study's compute budget in optimizer steps
    storage.py    SQLite, or a shared PostgreSQL study for many workers
    outputs.py    trials.csv, best.yaml, figures, summary.json
    workers.py    --processes N: N workers on this machine, each pinned to a device (tune.devices)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tunesmith import data, track
from tunesmith.errors import ConfigError
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir
from tunesmith.tune.budget import StepBudget, steps_used
from tunesmith.tune.objective import cv_folds, objective, report
from tunesmith.tune.outputs import TuneResult, write_outputs
from tunesmith.tune.space import pruner, repeat_of, sampler, suggest, trial_recipe, worker_seed_offset
from tunesmith.tune.storage import open_storage

__all__ = ["StepBudget", "TuneResult", "cv_folds", "pruner", "repeat_of", "report", "run", "sampler",
           "steps_used", "suggest", "trial_recipe"]


def run(recipe: Recipe, run_dir: RunDir, storage: str | None = None, study_name: str | None = None,
        trials: int | None = None, after: Callable[[RunDir], Any] | None = None,
        processes: int = 1) -> TuneResult:
    """The search, as one transaction on the run (data re-prepared, tune/ written); `after(view)`
    runs inside it (the CLI rebuilds the model card there, so it shows the search). `processes`
    > 1: that many workers on this machine share the study, each on its device (workers.py)."""
    import optuna

    cfg = recipe.tune
    if recipe.train.method == "grpo":
        raise ConfigError("tune scores trials by validation loss, which train.method grpo does not compute "
                          "(its validation would be sampling); tune the SFT run it starts from, then GRPO "
                          "with train.init_adapter.")
    if not cfg.space:
        raise ConfigError("tune.space is empty: add the recipe keys to search, e.g. "
                          "tune.space: {train.lr: {type: float, low: 1e-5, high: 1e-3, log: true}}")
    n_trials = trials or cfg.trials
    if n_trials is None and cfg.timeout_minutes is None and cfg.max_training_steps is None \
            and cfg.strategy != "grid":
        raise ConfigError("tune has no budget: set tune.trials, tune.timeout_minutes or "
                          "tune.max_training_steps.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stages = ("data", "tune", "report") if after is not None else ("data", "tune")
    with run_dir.transaction(recipe, stages) as view:
        data.run(recipe, view)
        splits = data.load_splits(view)
        if not splits.get("val") and cfg.cv_folds < 2:
            raise ConfigError("tuning needs validation data: set data.val, data.val_fraction > 0, "
                              "or tune.cv_folds.")
        # workers sharing a study each sample from their own seed: with the recipe's seed in every
        # worker they proposed the same points, and the repeats were answered without training
        seed_offset = 0 if storage is None else worker_seed_offset()
        url = storage or cfg.storage or f"sqlite:///{view.study_db.resolve()}"
        study = optuna.create_study(storage=open_storage(cfg, view, url),
                                    sampler=sampler(cfg, seed_offset), pruner=pruner(cfg),
                                    study_name=study_name or cfg.study or recipe.name,
                                    direction=cfg.direction, load_if_exists=True)
        started = time.time()
        study_run = track.for_study(recipe, view, study)
        try:
            _search(recipe, view, study, splits, (url, n_trials, processes), study_run)
            result = write_outputs(recipe, view, study, time.time() - started)
        except BaseException:
            study_run.finish("failed")
            raise
        _report_study(study_run, result, view)
        if after is not None:
            after(view)
    return replace(result, best_recipe=run_dir.best_recipe)


def _search(recipe: Recipe, view: RunDir, study: Any, splits: dict[str, list[dict]],
            workers: tuple[str, int | None, int], study_run: track.Tracking) -> None:
    """The trials, in this process or (`workers`: storage URL, trials, processes > 1) in workers
    on this machine, each on its own device (workers.py), until the budget is spent."""
    cfg = recipe.tune
    url, n_trials, processes = workers
    budget = StepBudget(cfg.max_training_steps, recipe.train.max_steps)
    if processes > 1:
        from tunesmith.tune.workers import run_workers

        run_workers(recipe, view, url, study.study_name, n_trials, processes)
    elif budget.fits(study):
        study.optimize(objective(recipe, view, splits, study_run), n_trials=n_trials,
                       timeout=cfg.timeout_minutes * 60 if cfg.timeout_minutes else None,
                       catch=(RuntimeError,), callbacks=[budget])


def _report_study(study_run: track.Tracking, result: TuneResult, view: RunDir) -> None:
    """The study's totals and outputs to its tracker run (its trials are its children)."""
    study_run.summary({"best_value": result.best_value, "trials": result.trials, "pruned": result.pruned})
    study_run.artifacts([view.tune_summary, view.best_recipe, view.trials_csv])
    study_run.finish()
