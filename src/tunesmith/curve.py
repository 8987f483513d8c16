"""`tunesmith curve RECIPE`: the learning curve of the user's own task, and what more data would buy.

    tunesmith curve recipes/demo.yaml                       # 1/8, 1/4, 1/2 and all of train
    tunesmith curve recipes/demo.yaml --fractions 0.25,0.5,1 --seeds 3

Each point is a run of the recipe, unchanged but for `data.train_fraction` (nested shares of the
training split; the validation and test sets stay the same) and `train.seed` (several seeds where
asked), named `<name>-curve-<share>-s<seed>`. Each is scored on the test set with its CI
(the fine-tuned model only: the base model does not change with the data; forgetting, bias,
benchmark and judge checks are left to the real run). evaluate/curve.py fits the saturating power
law and forecasts 2x and 10x; the result is kept as eval/curve.json of the full-data run, whose
report shows the figure.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith import pipeline, report
from tunesmith.artifacts import (
    CurvePoint,
    CurveSummary,
    DataReport,
    EvalSummary,
    Prediction,
    load,
    load_rows,
    save,
)
from tunesmith.errors import ConfigError
from tunesmith.evaluate.curve import forecast
from tunesmith.recipe import Recipe, recipe_from_dict
from tunesmith.rundir import open_run

FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def point_recipe(recipe: Recipe, fraction: float, seed: int) -> Recipe:
    """The recipe for one point: its share of train and its seed, scored on the fine-tuned model."""
    raw = recipe.model_dump(mode="json")
    raw["data"]["train_fraction"] = fraction
    raw["train"]["seed"] = seed
    raw["output"]["run_name"] = f"{recipe.output.run_name or recipe.name}-curve-{fraction:g}-s{seed}"
    raw["eval"].update(baseline=False, forgetting_probe=False)
    raw["eval"]["bias"]["enabled"] = False
    raw["eval"]["benchmarks"]["tasks"] = []
    raw["eval"]["judge"]["url"] = None
    return recipe_from_dict(raw, "curve")


def check(recipe: Recipe, fractions: list[float], seeds: int) -> None:
    if recipe.eval.metric == "none":
        raise ConfigError("tunesmith curve scores each point with eval.metric; set one (e.g. exact_match).")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"--fractions {','.join(f'{f:g}' for f in fractions)}: give shares of the training "
                          "split in (0, 1], e.g. 0.125,0.25,0.5,1")
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if not recipe.data.test and recipe.data.test_fraction <= 0:
        raise ConfigError("tunesmith curve scores each point on the test set: give data.test (a file) or "
                          "data.test_fraction (a share held out of train).")


def run(recipe: Recipe, fractions: list[float] | None = None, seeds: int = 1) -> tuple[CurveSummary, Path]:
    """Train and score every point, fit and forecast; returns the summary and where it is kept."""
    fractions = sorted(set(fractions or FRACTIONS))
    check(recipe, fractions, seeds)
    points = []
    for fraction in fractions:
        for seed in range(recipe.train.seed, recipe.train.seed + seeds):
            points.append(_point(point_recipe(recipe, fraction, seed), fraction, seed))
    summary = forecast(points, recipe.eval.metric)
    largest = open_run(point_recipe(recipe, fractions[-1], recipe.train.seed))
    save(summary, largest.curve)
    report.rebuild(largest.root)  # the report of the largest run shows the curve
    return summary, largest.curve


def _done(recipe: Recipe) -> bool:
    """The point's run exists, evaluated, from this very recipe (a rerun with more seeds or
    fractions trains only the new points)."""
    from tunesmith.recipe import load_recipe

    run_dir = open_run(recipe)
    if not (run_dir.eval_summary.is_file() and run_dir.recipe.is_file()):
        return False
    return load_recipe(run_dir.recipe).model_dump() == recipe.model_dump()


def _point(recipe: Recipe, fraction: float, seed: int) -> CurvePoint:
    if not _done(recipe):
        pipeline.run(recipe)
    run_dir = open_run(recipe)
    test = load(EvalSummary, run_dir.eval_summary).sets["test"]
    rows = sorted((p for p in load_rows(Prediction, run_dir.predictions) if p.set == "test"),
                  key=lambda p: p.index)
    train_rows = load(DataReport, run_dir.data_report).splits.get("train", 0)
    low, high = test.finetuned.ci or (test.finetuned.value, test.finetuned.value)
    return CurvePoint(fraction=fraction, seed=seed, train_examples=train_rows,
                      value=test.finetuned.value or 0.0, ci_low=low, ci_high=high, run=str(run_dir.root),
                      scores=[p.finetuned_score or 0.0 for p in rows])


def print_curve(summary: CurveSummary, where: Path) -> None:
    from rich.table import Table

    from tunesmith.console import out
    from tunesmith.formatting import pct

    table = Table(title=f"learning curve: fine-tuned {summary.metric} on {summary.set} "
                        f"({summary.examples} examples; 95% CI)")
    for column in ("share", "seed", "train examples", summary.metric, "run"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for point in summary.points:
        table.add_row(f"{point.fraction:g}", str(point.seed), str(point.train_examples),
                      pct(point.value, (point.ci_low, point.ci_high)), point.run)
    for fc in summary.forecasts:
        table.add_row(f"{fc.multiple:g}x (forecast)", "", str(fc.train_examples),
                      pct(fc.value, (fc.ci_low, fc.ci_high)), "")
    out.print(table)
    if summary.fit:
        out.print(f"fit: {summary.metric}(n) = {summary.fit.ceiling:.3f} - {summary.fit.scale:.3f} * "
                  f"(n / {max(p.train_examples for p in summary.points)})^-{summary.fit.exponent:.3f}",
                  highlight=False)
    out.print(summary.verdict, highlight=False, soft_wrap=True)
    out.print(f"kept in {where} (the figure is in that run's report.html)", highlight=False)
