"""The before/after table printed at the end of evaluation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tunesmith.rundir import RunDir


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_summary(summary: dict[str, Any], run_dir: RunDir, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"base vs fine-tuned ({summary['metric']})")
    for column in ("set", "examples", "base", "fine-tuned", "delta"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, row in summary["sets"].items():
        delta = row.get("delta")
        table.add_row(name, str(row["examples"]), _pct(row.get("base")), _pct(row.get("finetuned")),
                      "-" if delta is None else f"{100 * delta:+.1f} pts")
    validation = summary.get("validation", {})
    if validation:
        base, tuned = validation.get("base"), validation.get("finetuned")
        table.add_row("val perplexity", "", f"{base['perplexity']:.2f}" if base else "-",
                      f"{tuned['perplexity']:.2f}", "")
    console.print(table)
    console.print(f"run dir: {run_dir.root}  (eval/summary.json, eval/predictions.jsonl, model/, "
                  "train/log.jsonl, manifest.json)", highlight=False)
