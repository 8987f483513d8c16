"""run(recipe) = the stages in order: data -> train -> evaluate. Nothing else lives here."""

from __future__ import annotations

from tunesmith import data, evaluate, train
from tunesmith.evaluate.table import print_summary
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, open_run


def run(recipe: Recipe, resume: bool = False) -> RunDir:
    run_dir = open_run(recipe)
    data.print_stats(data.run(recipe, run_dir).stats)
    train.run(recipe, run_dir, resume=resume)
    result = evaluate.run(recipe, run_dir)
    print_summary(result.summary, run_dir)
    return run_dir
