"""The report stage: the model card (`runs/<run>/README.md`) and the run report
(`runs/<run>/report.html`), both built from the run directory alone.

    tunesmith report runs/demo          # rebuild both for an existing run
    tunesmith report runs/b --against runs/a   # ... with b's paired deltas against a in both
    tunesmith compare runs/a runs/b     # recipe diff and metric deltas between runs
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError


@dataclass
class ReportResult:
    card: Path
    html: Path


def run(run_dir) -> ReportResult:
    """Write the card and the report into `run_dir` (a transaction's view of the run)."""
    from tunesmith.files import write_text
    from tunesmith.report.card import build_card
    from tunesmith.report.html import build_report
    if not run_dir.has_model():
        raise ConfigError(f"{run_dir.home or run_dir.root}: no trained model (model/ is missing), and a "
                          "model card describes a trained model. Run `tunesmith train RECIPE` first.")
    write_text(run_dir.card, build_card(run_dir))
    write_text(run_dir.report_html, build_report(run_dir))
    return ReportResult(run_dir.card, run_dir.report_html)


def rebuild(path: Path, against: Path | None = None) -> ReportResult:
    """`tunesmith report RUN_DIR [--against OTHER]`: the card and report of an existing run,
    rebuilt in place; with `against`, they show this run's paired deltas against OTHER (kept in
    comparison.json, and kept by later rebuilds until the run is evaluated again)."""
    from tunesmith.files import write_json
    from tunesmith.recipe import load_recipe
    from tunesmith.report.compare import compare, to_json
    from tunesmith.rundir import open_run_dir
    target = open_run_dir(path)
    if not target.recipe.is_file() or not target.manifest.is_file():
        raise ConfigError(f"{path}: not a run directory (no recipe.yaml and manifest.json). Point at a "
                          "directory that `tunesmith run` or `tunesmith train` wrote, e.g. runs/demo.")
    recipe = load_recipe(target.recipe)
    comparison = to_json(compare([against, target.root])) if against is not None else None
    with target.transaction(recipe, ("report",)) as view:
        if comparison is not None:
            write_json(view.comparison, comparison)
        elif target.comparison.is_file():
            shutil.copyfile(target.comparison, view.comparison)
        run(view)
    return ReportResult(target.card, target.report_html)
