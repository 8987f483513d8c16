"""run(recipe) = the stages in order: data -> train -> evaluate -> report. Nothing else lives here."""

from __future__ import annotations

from tunesmith import data, evaluate, report, train
from tunesmith.evaluate.table import print_summary
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, open_run


def run(recipe: Recipe, resume: bool = False) -> RunDir:
    run_dir = open_run(recipe)
    data.print_stats(data.run(recipe, run_dir).stats)
    train.run(recipe, run_dir, resume=resume)
    try:
        result = evaluate.run(recipe, run_dir)
    finally:  # a failed quality gate still gets its card and report
        if (run_dir.eval / "summary.json").exists():
            report.run(run_dir)
    print_summary(result.summary, run_dir)
    return run_dir
