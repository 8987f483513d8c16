"""The stages in order, each command one transaction on the run directory (see rundir.py).

    prepare(recipe)          data                      (`tunesmith data prepare`)
    fine_tune(recipe)        data -> train             (`tunesmith train`)
    evaluate_run(recipe)     evaluate -> report        (`tunesmith eval`)
    search(recipe)           data -> tune (-> report)  (`tunesmith tune`)
    run(recipe)              fine_tune, then evaluate_run (`tunesmith run`, `tunesmith demo`)

`run` commits twice, after training and after evaluation: an evaluation that fails must not
throw away a model that trained for hours. Nothing else lives here.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from tunesmith import data, evaluate, report, track, train, tune
from tunesmith.errors import QualityGateError
from tunesmith.evaluate.table import print_summary
from tunesmith.monitor import reference as drift_reference
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, open_run
from tunesmith.train.distributed import Launch


def prepare(recipe: Recipe) -> data.DataResult:
    check_license(recipe)
    run_dir = open_run(recipe)
    with run_dir.transaction(recipe, ("data",)) as view:
        result = data.run(recipe, view)
    data.print_stats(result.report)
    return result


def check_license(recipe: Recipe) -> None:
    """Before any work: the base model's license and each training file's (data/licenses.py)
    against model.intended_use; a conflict stops here, terms to heed warn once each."""
    from tunesmith.console import warn
    from tunesmith.data.licenses import check, resolve
    from tunesmith.models.license import check_use

    warning = check_use(recipe.model)
    data_terms = check(recipe, resolve(recipe.data, recipe.train.init_adapter))
    for line in ([warning] if warning else []) + data_terms:
        warn(line)


class _NotThisMachine(Exception):
    """A machine of rank > 0 trained its share; machine 0 writes the run, this one commits nothing."""


def fine_tune(recipe: Recipe, resume: bool = False, launch: Launch | None = None) -> train.TrainResult:
    """A distributed `launch`: the data stage here, training in its workers (train/distributed.py).
    Training checks its step against the device's memory (train.fit) before loading weights."""
    check_license(recipe)
    run_dir = open_run(recipe)
    train.check_resumable(recipe, run_dir, resume)
    try:
        with run_dir.transaction(recipe, ("data", "train")) as view:
            data.print_stats(data.run(recipe, view).report)
            result = train.run(recipe, view, resume=resume, launch=launch)
            if launch is not None and not launch.writes_run:
                raise _NotThisMachine
            if recipe.monitor.enabled and recipe.model.family == "causal_lm":  # what serving compares with
                drift_reference.save_for_run(recipe, view)
    except _NotThisMachine:
        pass
    shutil.rmtree(run_dir.checkpoints, ignore_errors=True)  # committed: nothing left to resume
    if run_dir.work.is_dir() and not any(run_dir.work.iterdir()):
        run_dir.work.rmdir()
    return replace(result, model_dir=run_dir.model)


def evaluate_run(recipe: Recipe, launch: Launch | None = None) -> evaluate.EvalResult:
    run_dir = open_run(recipe)
    with run_dir.transaction(recipe, ("eval", "report")) as view:
        result = evaluate.run(recipe, view, processes=launch.processes if launch else 1)
        report.run(view)
    track.evaluated(recipe, run_dir, result.summary)  # committed: the scores and documents to the trackers
    print_summary(result.summary, run_dir)
    if result.gate_failure:  # every result is written first
        raise QualityGateError(result.gate_failure)
    return result


def search(recipe: Recipe, storage: str | None = None, study_name: str | None = None,
           trials: int | None = None, processes: int = 1) -> tune.TuneResult:
    """The tune stage; the model card of a trained run is rebuilt with it, to show the search."""
    check_license(recipe)
    run_dir = open_run(recipe)
    return tune.run(recipe, run_dir, storage=storage, study_name=study_name, trials=trials,
                    after=report.run if run_dir.has_model() else None, processes=processes)


def retrain_best(best_path: Path) -> RunDir:
    """After a cross-validated search: the best values on all of train, evaluated once on test."""
    from tunesmith.recipe import load_recipe

    return run(load_recipe(best_path))


def run(recipe: Recipe, resume: bool = False, launch: Launch | None = None) -> RunDir:
    fine_tune(recipe, resume=resume, launch=launch)
    if launch is None or launch.writes_run:
        evaluate_run(recipe, launch)
    return open_run(recipe)
