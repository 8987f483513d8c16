"""What a trial tries: the search space, the sampler (grid, random, Bayesian TPE), the pruner,
and the recipe a trial's values make."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tunesmith.recipe import Recipe, apply_overrides, recipe_from_dict


def suggest(trial: Any, cfg: Any) -> dict[str, Any]:
    """The trial's values for every key of tune.space (grid: the listed grid values)."""
    params = {}
    for key, space in cfg.space.items():
        if cfg.strategy == "grid" or space.type == "categorical":
            params[key] = trial.suggest_categorical(key, space.grid_values())
        elif space.type == "int":
            params[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
        else:
            params[key] = trial.suggest_float(key, space.low, space.high, log=space.log)
    return params


def repeat_of(trial: Any, params: dict[str, Any]) -> Any:
    """A completed trial with exactly these values: samplers repeat points of discrete spaces, and a
    repeat is answered from the study instead of training again."""
    import optuna

    for done in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if done.params == params:
            return done
    return None


def trial_recipe(recipe: Recipe, params: dict[str, Any], run_name: str, out_dir: Path) -> Recipe:
    """The recipe with `params` (recipe keys -> values) applied, writing to its own run dir."""
    raw = recipe.model_dump(mode="json")
    raw = apply_overrides(raw, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                for k, v in params.items()])
    raw["output"] = {"dir": str(out_dir), "run_name": run_name}
    if recipe.tune.pruner != "none" and raw["train"]["eval_steps"] is None:
        # pruning needs validation losses while training, not only at the end of an epoch
        raw["train"]["eval_steps"] = recipe.tune.eval_steps
    raw["tune"] = {}
    return recipe_from_dict(raw, f"trial {run_name}")


def worker_seed_offset() -> int:
    """A number of this worker's own (host and process), added to the sampler's seed when workers
    share a study, so that they do not all propose the same points."""
    import zlib

    return zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) % 1_000_003


def sampler(cfg: Any, seed_offset: int = 0) -> Any:
    """The search strategy's sampler; `seed_offset` 0 (one worker) keeps the recipe's seed exactly."""
    import optuna

    seed = cfg.seed + seed_offset
    if cfg.strategy == "grid":
        return optuna.samplers.GridSampler({k: s.grid_values() for k, s in cfg.space.items()}, seed=seed)
    if cfg.strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials still running on other workers count as bad, so workers spread out
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=cfg.startup_trials,
                                      constant_liar=True)


def pruner(cfg: Any) -> Any:
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=cfg.hyperband_reduction_factor)
    return optuna.pruners.NopPruner()
