"""How a trial is scored: train with the trial's values and take the validation loss, reported
while training so the pruner can stop it; or the mean over k folds of train (cross-validation).
A completed trial's values seen again are answered from the study."""

from __future__ import annotations

import os
import shutil
import statistics
from typing import Any

from tunesmith import train
from tunesmith.data.balance import resolve_strata, stratified_split
from tunesmith.errors import ConfigError
from tunesmith.files import write_text
from tunesmith.recipe import Recipe, dump_recipe
from tunesmith.rundir import RunDir
from tunesmith.track import Tracking
from tunesmith.train.fit import MemoryFitError
from tunesmith.tune.space import repeat_of, suggest, trial_recipe


def report(trial: Any, value: float, step: int, last_step: int) -> bool:
    """Report an intermediate validation loss; True if the pruner stops the trial here. The last
    evaluation is never pruned: the trial has cost its full steps by then and counts as complete."""
    trial.report(value, step)
    return step < last_step and bool(trial.should_prune())


def cv_folds(records: list[dict], k: int, strata: str, seed: int) -> list[tuple[list[dict], list[dict]]]:
    """k (train, validation) pairs; each record validates exactly once; stratified when possible."""
    remaining = list(range(len(records)))
    folds: list[list[int]] = []
    for fold in range(k - 1):
        chosen, kept = stratified_split([records[i] for i in remaining], 1 / (k - fold), strata, seed + fold)
        folds.append([remaining[i] for i in kept])
        remaining = [remaining[i] for i in chosen]
    folds.append(remaining)
    pairs = []
    for fold in folds:
        held_out = set(fold)
        pairs.append(([r for j, r in enumerate(records) if j not in held_out], [records[j] for j in fold]))
    return pairs


def _cross_validated(trial: Any, recipe: Recipe, candidate: Recipe, trial_dir: RunDir,
                     train_rows: list[dict]) -> float:
    """Mean validation loss over tune.cv_folds folds of train (std kept); pruned between folds."""
    import optuna

    cfg = recipe.tune
    strata = resolve_strata(train_rows, recipe.data.balance.by)
    losses, steps = [], 0
    folds = cv_folds(train_rows, cfg.cv_folds, strata, recipe.data.seed)
    for fold, (fold_train, fold_val) in enumerate(folds):
        # the folds are not tracked one by one: the trial's child run gets their mean
        result = train.run(candidate, trial_dir, splits={"train": fold_train, "val": fold_val},
                           tracking=Tracking([]))
        losses.append(result.final_eval_loss)
        steps += result.steps
        if report(trial, statistics.fmean(losses), fold, cfg.cv_folds - 1):
            trial.set_user_attr("steps", steps)
            raise optuna.TrialPruned()
    trial.set_user_attr("cv_mean", statistics.fmean(losses))
    trial.set_user_attr("cv_std", statistics.pstdev(losses))
    trial.set_user_attr("steps", steps)
    return statistics.fmean(losses)


def _validated(trial: Any, candidate: Recipe, trial_dir: RunDir, splits: dict[str, list[dict]],
               tracking: Tracking) -> float:
    """The final validation loss of one training run, reported at every evaluation for pruning."""
    import optuna

    pruned: list[int] = []

    def prune(step: int, last_step: int, value: float) -> bool:
        if report(trial, value, step, last_step):
            pruned.append(step)
        return bool(pruned)

    result = train.run(candidate, trial_dir, on_eval_loss=prune, splits=splits, tracking=tracking)
    trial.set_user_attr("steps", result.steps)
    if pruned:
        raise optuna.TrialPruned()
    if result.final_eval_loss is None:
        raise ConfigError("tuning needs validation data: set data.val or data.val_fraction > 0.")
    return result.final_eval_loss


class TrialOutOfMemory(RuntimeError):
    """A trial that did not fit: recorded as failed (failure: out_of_memory, fix), the study goes on."""


def _out_of_memory(trial: Any, fix: str) -> TrialOutOfMemory:
    trial.set_user_attr("failure", "out_of_memory")
    trial.set_user_attr("fix", fix)
    return TrialOutOfMemory(fix)


def _is_oom(error: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS), or the CPU allocator's failure."""
    import torch

    return isinstance(error, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(error).lower()


def _fixes(recipe: Recipe) -> str:
    from tunesmith.train.fit import candidate_fixes

    found = ["; ".join(f"{k}={v}" for k, v in fix.items()) for fix in candidate_fixes(recipe)[:3]]
    return " | ".join(found) or "a smaller model or more memory"


def free_memory() -> None:
    """Between trials: what the last trial's model, optimizer and trainer held, returned (their
    reference cycles collected, the CUDA caching allocator emptied), so the next trial starts
    with the device's whole memory."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def objective(recipe: Recipe, run_dir: RunDir, splits: dict[str, list[dict]],
              study_run: Tracking | None = None):
    """The Optuna objective: a trial's values -> its (mean) validation loss. With the study's
    tracker run (`study_run`), each trained trial is a child run of it, its state recorded."""
    import optuna

    cfg = recipe.tune

    def tracked(trial: Any) -> float:
        params = suggest(trial, cfg)
        if repeat_of(trial, params) is not None or not study_run:
            return score(trial, params)
        child = study_run.child(f"trial-{trial.number}")
        child.params({"trial": trial.number, **params})
        try:
            value = score(trial, params, child)
        except optuna.TrialPruned:
            child.finish("pruned")
            raise
        except BaseException:
            child.finish("failed")
            raise
        child.summary({"objective": value})
        child.finish()
        return value

    def score(trial: Any, params: dict[str, Any], tracking: Tracking | None = None) -> float:
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        trial.set_user_attr("device", os.environ.get("TUNESMITH_TUNE_DEVICE", "default"))
        if (done := repeat_of(trial, params)) is not None:
            trial.set_user_attr("duplicate_of", done.number)
            trial.set_user_attr("steps", 0)
            return done.value
        name = f"trial-{trial.number}"
        candidate = trial_recipe(recipe, params, name, run_dir.trials)
        trial_dir = RunDir(run_dir.trials / name)
        trial_dir.root.mkdir(parents=True, exist_ok=True)
        write_text(trial_dir.recipe, dump_recipe(candidate))
        try:
            if cfg.cv_folds >= 2:
                return _cross_validated(trial, recipe, candidate, trial_dir, splits["train"])
            return _validated(trial, candidate, trial_dir, splits, tracking or Tracking([]))
        except MemoryFitError as error:  # train.fit refused the trial's values before loading
            raise _out_of_memory(trial, str(error)) from None
        except Exception as error:
            if not _is_oom(error):
                raise
            raise _out_of_memory(trial, f"{type(error).__name__} while training; settings that need "
                                 f"less: {_fixes(candidate)}") from None
        finally:  # keep the trial's recipe, logs and summary; weights and checkpoints are large
            shutil.rmtree(trial_dir.model, ignore_errors=True)
            shutil.rmtree(trial_dir.work, ignore_errors=True)
            free_memory()

    return tracked
