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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tunesmith import data, train
from tunesmith.data.balance import resolve_strata, stratified_split
from tunesmith.errors import ConfigError
from tunesmith.recipe import Recipe, apply_overrides, dump_recipe, recipe_from_dict
from tunesmith.rundir import RunDir, write_json, write_text


@dataclass
class TuneResult:
    best_value: float | None
    best_params: dict[str, Any]
    best_recipe: Path
    trials: int
    pruned: int
    study: Any = None
    """The Optuna study (all trials, their intermediate losses and attributes)."""


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


def sampler(cfg: Any) -> Any:
    import optuna

    if cfg.strategy == "grid":
        return optuna.samplers.GridSampler({k: s.grid_values() for k, s in cfg.space.items()}, seed=cfg.seed)
    if cfg.strategy == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    # constant_liar: trials still running on other workers count as bad, so workers spread out
    return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, n_startup_trials=cfg.startup_trials,
                                      constant_liar=True)


def pruner(cfg: Any) -> Any:
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _storage(cfg: Any, run_dir: RunDir, url: str | None) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.engine import make_url

    url = url or cfg.storage or f"sqlite:///{(run_dir.work / 'study.db').resolve()}"
    run_dir.work.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), _schema_lock(url):  # the heartbeat callback is experimental
            warnings.simplefilter("ignore")
            return RDBStorage(url, heartbeat_interval=cfg.heartbeat_seconds,
                              grace_period=2 * cfg.heartbeat_seconds,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=cfg.retries))
    except Exception as error:  # SQLAlchemy, driver and Optuna errors all mean "cannot use it"
        password = make_url(url).password if "://" in url else None
        detail = str(error).splitlines()[0][:200]
        if password:  # never print credentials
            detail = detail.replace(str(password), "***")
        shown = url.split("@")[-1]
        raise ConfigError(f"tune storage ...@{shown}: cannot connect ({type(error).__name__}: {detail}). "
                          "Check the URL, that the server runs, and the driver "
                          "(pip install 'tunesmith[distributed]' for PostgreSQL).") from None


SCHEMA_LOCK_KEY = 0x7475_6E65  # "tune": one PostgreSQL advisory lock id for schema creation


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Workers starting together on an empty PostgreSQL database would each create Optuna's
    tables and race (UniqueViolation on pg_type); an advisory lock lets one create them while
    the others wait, then find them. SQLite is one file per run and needs none."""
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


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


def _objective(recipe: Recipe, run_dir: RunDir, splits: dict[str, list[dict]]):
    import optuna

    cfg = recipe.tune
    trials_dir = run_dir.trials
    strata = resolve_strata(splits["train"], recipe.data.balance.by)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        if (done := repeat_of(trial, params)) is not None:
            trial.set_user_attr("duplicate_of", done.number)
            trial.set_user_attr("steps", 0)
            return done.value
        name = f"trial-{trial.number}"
        candidate = trial_recipe(recipe, params, name, trials_dir)
        trial_dir = RunDir(trials_dir / name)
        trial_dir.root.mkdir(parents=True, exist_ok=True)
        write_text(trial_dir.recipe, dump_recipe(candidate))
        try:
            if cfg.cv_folds >= 2:
                losses, steps = [], 0
                for fold, (fold_train, fold_val) in enumerate(
                        cv_folds(splits["train"], cfg.cv_folds, strata, recipe.data.seed)):
                    result = train.run(candidate, trial_dir, splits={"train": fold_train, "val": fold_val})
                    losses.append(result.final_eval_loss)
                    steps += result.steps
                    if report(trial, statistics.fmean(losses), fold, cfg.cv_folds - 1):
                        trial.set_user_attr("steps", steps)
                        raise optuna.TrialPruned()
                trial.set_user_attr("cv_mean", statistics.fmean(losses))
                trial.set_user_attr("cv_std", statistics.pstdev(losses))
                trial.set_user_attr("steps", steps)
                return statistics.fmean(losses)
            pruned: list[int] = []

            def prune(step: int, last_step: int, value: float) -> bool:
                if report(trial, value, step, last_step):
                    pruned.append(step)
                return bool(pruned)

            result = train.run(candidate, trial_dir, on_eval_loss=prune, splits=splits)
            trial.set_user_attr("steps", result.steps)
            if pruned:
                raise optuna.TrialPruned()
            if result.final_eval_loss is None:
                raise ConfigError("tuning needs validation data: set data.val or data.val_fraction > 0.")
            return result.final_eval_loss
        finally:  # keep the trial's recipe, logs and summary; weights and checkpoints are large
            shutil.rmtree(trial_dir.model, ignore_errors=True)
            shutil.rmtree(trial_dir.work, ignore_errors=True)

    return objective


def _figures(study: Any, out: Path) -> list[str]:
    """Optimisation history, parameter importances, parallel coordinates (PNG); those that apply."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    written = []
    for name, plot in (("history", plots.plot_optimization_history),
                       ("importances", plots.plot_param_importances),
                       ("parallel", plots.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():  # experimental plots; degenerate axes of tiny studies
                warnings.simplefilter("ignore")
                axis = plot(study)
        except Exception:  # e.g. importances need 2+ completed trials with varying values
            continue
        figure = axis.figure if hasattr(axis, "figure") else axis.flat[0].figure
        figure.set_size_inches(7, 3.5)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=90)
        plt.close(figure)
        written.append(f"{name}.png")
    return written


def steps_used(study: Any) -> int:
    """Optimizer steps of every finished trial in the study (all workers; pruned trials included)."""
    return sum(t.user_attrs.get("steps", 0) for t in study.get_trials(deepcopy=False))


class StepBudget:
    """tune.max_training_steps: start a trial only while a full-length one still fits.

    A full-length trial is the longest any trial has run so far, or train.max_steps before the first.
    """

    def __init__(self, limit: int | None, max_steps: int | None):
        self.limit, self.max_steps = limit, max_steps

    def fits(self, study: Any) -> bool:
        if self.limit is None:
            return True
        longest = max([t.user_attrs.get("steps", 0) for t in study.get_trials(deepcopy=False)]
                      + [self.max_steps or 0])
        return steps_used(study) + longest <= self.limit

    def __call__(self, study: Any, trial: Any) -> None:
        if not self.fits(study):
            study.stop()


def run(recipe: Recipe, run_dir: RunDir, storage: str | None = None, study_name: str | None = None,
        trials: int | None = None, after: Callable[[RunDir], Any] | None = None) -> TuneResult:
    """The search, as one transaction on the run (data re-prepared, tune/ written); `after(view)`
    runs inside it (the CLI rebuilds the model card there, so it shows the search)."""
    import optuna

    cfg = recipe.tune
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
        study = optuna.create_study(storage=_storage(cfg, view, storage), sampler=sampler(cfg),
                                    pruner=pruner(cfg), study_name=study_name or cfg.study or recipe.name,
                                    direction=cfg.direction, load_if_exists=True)
        started = time.time()
        budget = StepBudget(cfg.max_training_steps, recipe.train.max_steps)
        if budget.fits(study):
            study.optimize(_objective(recipe, view, splits), n_trials=n_trials,
                           timeout=cfg.timeout_minutes * 60 if cfg.timeout_minutes else None,
                           catch=(RuntimeError,), callbacks=[budget])
        result = _write_outputs(recipe, view, study, time.time() - started)
        if after is not None:
            after(view)
    return replace(result, best_recipe=run_dir.tune / "best.yaml")


def _write_outputs(recipe: Recipe, run_dir: RunDir, study: Any, seconds: float) -> TuneResult:
    import optuna

    cfg = recipe.tune
    out = run_dir.tune
    frame = study.trials_dataframe()
    write_text(out / "trials.csv", frame.to_csv(index=False))
    states = [t.state for t in study.trials]
    pruned = sum(s == optuna.trial.TrialState.PRUNED for s in states)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_params = study.best_trial.params if complete else {}
    best_value = study.best_value if complete else None
    best = trial_recipe(recipe, best_params, f"{recipe.name}-best", Path(recipe.output.dir))
    best_path = out / "best.yaml"
    write_text(best_path, f"# tunesmith run {best_path}\n# best of {len(complete)} completed trials "
                          f"({cfg.strategy}), validation loss {best_value}\n" + dump_recipe(best))
    compute = steps_used(study)
    summary = {
        "strategy": cfg.strategy, "pruner": cfg.pruner, "cv_folds": cfg.cv_folds,
        "space": {k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()},
        "budget": {"trials": cfg.trials, "timeout_minutes": cfg.timeout_minutes,
                   "max_training_steps": cfg.max_training_steps},
        "duplicates": sum("duplicate_of" in t.user_attrs for t in study.trials),
        "trials": len(study.trials), "completed": len(complete), "pruned": pruned,
        "failed": sum(s == optuna.trial.TrialState.FAIL for s in states),
        "best_value": best_value, "best_params": best_params,
        "best_user_attrs": study.best_trial.user_attrs if complete else {},
        "training_steps_used": compute, "seconds": seconds,
        "workers": sorted({t.user_attrs.get("worker", "?") for t in study.trials}),
        "figures": _figures(study, out) if complete else [],
    }
    summary["card_text"] = (
        f"{cfg.strategy} search ({cfg.pruner} pruning"
        + (f", {cfg.cv_folds}-fold cross-validation" if cfg.cv_folds >= 2 else "")
        + f") over {', '.join(cfg.space)}: {len(study.trials)} trials ({len(complete)} completed, "
        f"{pruned} pruned, {summary['duplicates']} repeats answered from the study), {compute} training "
        f"steps in all" + (f" (budget {cfg.max_training_steps})" if cfg.max_training_steps else "")
        + f". Best validation loss {best_value} with "
        + ", ".join(f"{k} = {v}" for k, v in best_params.items()) + ".")
    write_json(run_dir.tune_summary, summary)
    return TuneResult(best_value, best_params, best_path, len(study.trials), pruned, study)
