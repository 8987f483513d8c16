"""What a search leaves in tune/: trials.csv, best.yaml (a complete recipe replaying the best
trial), figures, and summary.json (`artifacts.TuneSummary`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.artifacts import TuneSummary, save
from tunesmith.files import write_text
from tunesmith.recipe import Recipe, dump_recipe
from tunesmith.rundir import RunDir
from tunesmith.tune.budget import steps_used
from tunesmith.tune.space import trial_recipe


@dataclass
class TuneResult:
    best_value: float | None
    best_params: dict[str, Any]
    best_recipe: Path
    trials: int
    pruned: int
    study: Any = None
    """The Optuna study (all trials, their intermediate losses and attributes)."""


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


def write_outputs(recipe: Recipe, run_dir: RunDir, study: Any, seconds: float) -> TuneResult:
    import optuna

    cfg = recipe.tune
    out = run_dir.tune
    write_text(run_dir.trials_csv, study.trials_dataframe().to_csv(index=False))
    states = [t.state for t in study.trials]
    pruned = sum(s == optuna.trial.TrialState.PRUNED for s in states)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_params = study.best_trial.params if complete else {}
    best_value = study.best_value if complete else None
    best = trial_recipe(recipe, best_params, f"{recipe.name}-best", Path(recipe.output.dir))
    best_path = run_dir.best_recipe
    write_text(best_path, f"# tunesmith run {best_path}\n# best of {len(complete)} completed trials "
                          f"({cfg.strategy}), validation loss {best_value}\n" + dump_recipe(best))
    compute = steps_used(study)
    summary = TuneSummary(
        strategy=cfg.strategy, pruner=cfg.pruner, cv_folds=cfg.cv_folds,
        space={k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()},
        budget={"trials": cfg.trials, "timeout_minutes": cfg.timeout_minutes,
                "max_training_steps": cfg.max_training_steps},
        duplicates=sum("duplicate_of" in t.user_attrs for t in study.trials),
        trials=len(study.trials), completed=len(complete), pruned=pruned,
        failed=sum(s == optuna.trial.TrialState.FAIL for s in states),
        best_value=best_value, best_params=best_params,
        best_user_attrs=study.best_trial.user_attrs if complete else {},
        training_steps_used=compute, seconds=seconds,
        workers=sorted({t.user_attrs.get("worker", "?") for t in study.trials}),
        figures=_figures(study, out) if complete else [], card_text="")
    summary.card_text = (
        f"{cfg.strategy} search ({cfg.pruner} pruning"
        + (f", {cfg.cv_folds}-fold cross-validation" if cfg.cv_folds >= 2 else "")
        + f") over {', '.join(cfg.space)}: {len(study.trials)} trials ({len(complete)} completed, "
        f"{pruned} pruned, {summary.duplicates} repeats answered from the study), {compute} training "
        f"steps in all" + (f" (budget {cfg.max_training_steps})" if cfg.max_training_steps else "")
        + f". Best validation loss {best_value} with "
        + ", ".join(f"{k} = {v}" for k, v in best_params.items()) + ".")
    save(summary, run_dir.tune_summary)
    return TuneResult(best_value, best_params, best_path, len(study.trials), pruned, study)
