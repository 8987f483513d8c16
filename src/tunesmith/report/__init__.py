"""The report stage: the model card (`runs/<run>/README.md`) and the run report
(`runs/<run>/report.html`), both built from the run directory alone.

    tunesmith report runs/demo          # rebuild both for an existing run
    tunesmith compare runs/a runs/b     # recipe diff and metric deltas between runs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReportResult:
    card: Path
    html: Path


def run(run_dir) -> ReportResult:
    from tunesmith.report.card import build_card
    from tunesmith.report.html import build_report
    from tunesmith.rundir import write_text

    card, page = run_dir.root / "README.md", run_dir.root / "report.html"
    write_text(card, build_card(run_dir))
    write_text(page, build_report(run_dir))
    run_dir.record("report", card, page)
    return ReportResult(card, page)
