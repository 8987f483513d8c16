"""The before/after table printed at the end of evaluation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tunesmith.rundir import RunDir


def _pct(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.1f}%"
    return text + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else "")


def _delta(paired: dict[str, Any] | None) -> str:
    if not paired:
        return "-"
    mark = " *" if paired.get("significant") else ""
    return (f"{100 * paired['delta']:+.1f} pts [{100 * paired['ci_low']:+.0f}, "
            f"{100 * paired['ci_high']:+.0f}]{mark}")


def print_summary(summary: dict[str, Any], run_dir: RunDir, console: Console | None = None) -> None:
    from tunesmith.console import out, warn

    console = console or out
    table = Table(title=f"base vs fine-tuned: {summary['metric']} (95% CI; * = significant)")
    for column in ("set", "examples", "base", "fine-tuned", "delta"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, row in summary["sets"].items():
        table.add_row(name, str(row["examples"]), _pct(row.get("base"), row.get("base_ci")),
                      _pct(row.get("finetuned"), row.get("finetuned_ci")), _delta(row.get("paired")))
    forgetting = summary.get("forgetting")
    if forgetting:
        table.add_row("general probe", str(forgetting["examples"]), _pct(forgetting.get("base")),
                      _pct(forgetting.get("finetuned")), _delta(forgetting.get("paired")))
    validation = summary.get("validation", {})
    if validation:
        base, tuned = validation.get("base"), validation.get("finetuned")
        table.add_row("val perplexity", "", f"{base['perplexity']:.2f}" if base else "-",
                      f"{tuned['perplexity']:.2f}", "")
    console.print(table)
    for dimension, result in summary.get("bias", {}).get("dimensions", {}).items():
        if result.get("prompts"):
            console.print(f"bias {dimension}: gap {100 * result['gap']:.1f} pts over "
                          f"{len(result['per_group'])} groups, {100 * result['changed_share']:.0f}% of "
                          f"{result['prompts']} answers changed with the group only", highlight=False)
    for warning in summary.get("warnings", []):
        warn(warning)
    console.print(f"run dir: {run_dir.home or run_dir.root}  (eval/summary.json, eval/predictions.jsonl, "
                  "model/, train/log.jsonl, manifest.json)", highlight=False)
