"""The before/after table printed at the end of evaluation."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tunesmith.artifacts import EvalSummary
from tunesmith.formatting import delta, interval, number, pct, points
from tunesmith.rundir import RunDir


def print_summary(summary: EvalSummary, run_dir: RunDir, console: Console | None = None) -> None:
    from tunesmith.console import out, warn

    console = console or out
    classifier = any(row.majority is not None for row in summary.sets.values())
    base_name = "k-NN" if classifier else "base"
    title = f"{base_name} vs fine-tuned: {summary.metric} (95% CI; * = significant)"
    if classifier:
        title += f"\n{summary.baseline}; majority: always the commonest training label"
    table = Table(title=title)
    columns = ("set", "examples", *(["majority"] if classifier else []), base_name, "fine-tuned", "delta")
    for column in columns:
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, row in summary.sets.items():
        base = row.base
        floor = [pct(row.majority)] if classifier else []
        table.add_row(name, str(row.examples), *floor, pct(base.value, base.ci) if base else "-",
                      pct(row.finetuned.value, row.finetuned.ci), delta(row.paired))
    forgetting = summary.forgetting
    if forgetting:
        table.add_row("general probe" if forgetting.source == "probe" else "forgetting (benchmarks)",
                      str(forgetting.examples), pct(forgetting.base), pct(forgetting.finetuned),
                      delta(forgetting.paired))
    for name, bench in (summary.benchmarks.tasks.items() if summary.benchmarks else []):
        table.add_row(f"{name} ({bench.metric})", str(bench.examples), interval(bench.base),
                      interval(bench.finetuned), delta(bench.paired))
    validation = summary.validation
    if validation.finetuned:
        table.add_row("val perplexity", "", *([""] if classifier else []),
                      number(validation.base.perplexity if validation.base else None),
                      number(validation.finetuned.perplexity), "")
    console.print(table)
    for dimension, result in (summary.bias.dimensions.items() if summary.bias else []):
        if result.prompts:
            console.print(f"bias {dimension}: gap {points(result.gap)} over {len(result.per_group)} groups, "
                          f"{100 * result.changed_share:.0f}% of {result.prompts} answers changed with the "
                          "group only", highlight=False)
    for name, result in summary.sets.items():
        for model, stats in result.reasoning.items():
            console.print(f"reasoning {name} ({model}): {stats.answers_with_reasoning} of {result.examples} "
                          f"answers thought first, mean {stats.mean_reasoning_tokens:.0f} tokens, scored on "
                          f"the answer after it; {stats.unfinished} cut off while thinking", highlight=False)
    for name, found in (summary.judge.sets.items() if summary.judge else []):
        console.print(f"judge {name}: fine-tuned grade {found.finetuned.value:.2f} of {summary.judge.scale}"
                      + (f", base {found.base.value:.2f}" if found.base else "")
                      + (f", fine-tuned preferred {interval(found.win_rate)} in both orders"
                         if found.win_rate else "")
                      + f" ({summary.judge.requests} requests)", highlight=False)
    for warning in summary.warnings:
        warn(warning)
    console.print(f"run dir: {run_dir.home or run_dir.root}  (eval/summary.json, eval/predictions.jsonl, "
                  "model/, train/log.jsonl, manifest.json)", highlight=False)
