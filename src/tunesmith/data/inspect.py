"""`tunesmith data inspect FILE`: what is in one data file, without writing a run.

One pass of the data stage (`data.analyse`, nothing written) over the file alone with no split:
the detected format, row and turn counts, token-length percentiles with the recipe's tokenizer,
the invalid rows with their locations, a few examples, and the stage's report on the file
(cleaning, filters, duplicate and templated-answer clusters, diversity). Any record kind is
described, whatever train.method is: preference data is inspected as it will be trained with
train.method dpo or kto.
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.artifacts import InspectReport
from tunesmith.data.report import percentiles
from tunesmith.recipe import Recipe
from tunesmith.records import as_chat

TOKENS_MEASURE = {"chat": "the conversation as the chat template renders it",
                  "classification": "text and label as the model reads them",
                  "text": "the whole document (packed into train.max_length blocks for training)",
                  "preference": "the prompt with its chosen (or judged) answer"}


def inspect_file(path: str, recipe: Recipe, tokenizer: Any | None = None, examples: int = 3) -> InspectReport:
    """A report on one file. `tokenizer=None` loads the recipe model's tokenizer."""
    from tunesmith import data
    from tunesmith.data.rows import check_readable

    check_readable(path, "`tunesmith data inspect`")
    if tokenizer is None:
        from tunesmith.models.loading import load_tokenizer

        tokenizer = load_tokenizer(recipe.model)
    single = recipe.data.model_copy(update={
        "train": [path], "val": None, "test": None, "eval_sets": {}, "on_invalid": "skip",
        "val_fraction": 0.0, "test_fraction": 0.0})
    result = data.analyse(recipe.model_copy(update={"data": single}), tokenizer, objective=False)
    loaded = result.files[path]
    records = loaded.records
    report: dict[str, Any] = {
        "path": path, "format": loaded.format, "kind": loaded.kind,
        "rows": len(records) + len(loaded.invalid), "valid_rows": len(records),
        "invalid_rows": len(loaded.invalid), "invalid": [vars(i) for i in loaded.invalid],
        "examples": records[:examples], "non_text_parts_dropped": dict(loaded.non_text_parts),
        "tool_calling_rows": sum(1 for r in records if r.get("tools") or any(
            m.get("tool_calls") for m in r.get("messages", []))),
        "reasoning_rows": sum(1 for r in records if any(m.get("reasoning") for m in r.get("messages", []))),
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "tokens": percentiles([result.length(r) for r in records]),
        "tokens_measure": TOKENS_MEASURE[loaded.kind],
        "data_report": result.report,
    }
    if loaded.kind == "preference":
        labels = [r["label"] for r in records if "label" in r]
        report["preference"] = {"pairs": sum("chosen" in r for r in records),
                                "desirable": sum(labels), "undesirable": len(labels) - sum(labels)}
    if loaded.kind == "chat":
        turns = [sum(m["role"] == "assistant" for m in as_chat(r)) for r in records]
        report["turns"] = {"assistant_turns_total": sum(turns), "mean_per_row": sum(turns) / len(turns),
                           "max_per_row": max(turns), "multi_turn_rows": sum(t > 1 for t in turns)}
    if loaded.kind == "classification":
        counts: dict[str, int] = {}
        for record in records:
            counts[record["label"]] = counts.get(record["label"], 0) + 1
        report["labels"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return InspectReport.model_validate(report)


def print_report(report: InspectReport) -> None:
    from rich.table import Table
    from rich.text import Text

    from tunesmith.console import out as console
    from tunesmith.data.report import print_report_summary

    table = Table(title=report.path, show_header=False)
    table.add_row("format", f"{report.format} ({report.kind} records)")
    table.add_row("rows", f"{report.rows} ({report.valid_rows} valid, {report.invalid_rows} invalid)")
    if report.turns:
        t = report.turns
        table.add_row("assistant turns", f"{t['assistant_turns_total']} (mean {t['mean_per_row']:.2f}/row, "
                      f"max {t['max_per_row']}, {t['multi_turn_rows']} multi-turn rows)")
    if report.labels:
        table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in report.labels.items()))
    if report.tool_calling_rows:
        table.add_row("tool calling", f"{report.tool_calling_rows} rows with tool schemas or calls")
    if report.reasoning_rows:
        table.add_row("reasoning", f"{report.reasoning_rows} rows with reasoning traces (train.reasoning: "
                      "train, mask or drop decides what the model learns of them)")
    if report.non_text_parts_dropped:
        parts = ", ".join(f"{k}: {v}" for k, v in report.non_text_parts_dropped.items())
        table.add_row("non-text parts", parts + " (dropped: tunesmith trains on text)")
    if report.preference:
        p = report.preference
        table.add_row("preference", (f"{p['pairs']} chosen/rejected pairs: train with train.method: dpo"
                                     if p["pairs"] else f"{p['desirable']} desirable, {p['undesirable']} "
                                     "undesirable answers: train with train.method: kto"))
    if report.kind == "text":
        table.add_row("training", "continued pre-training: documents packed into train.max_length blocks, "
                      "EOS between them, loss on every token")
    licensed = report.data_report.licenses.files[0] if report.data_report.licenses else None
    if licensed:
        table.add_row("license", f"{licensed.license}: no data.licenses entry and no dataset card "
                      "(README.md) beside it" if licensed.declared_in == "nowhere" else
                      f"{licensed.license} (from {licensed.declared_in})")
    table.add_row("tokens per row", "  ".join(f"{k} {v:.0f}" for k, v in report.tokens.items())
                  + f"  ({report.tokenizer}; {report.tokens_measure})")
    console.print(table)
    for item in report.invalid[:20]:
        console.print(Text("invalid ", style="red") + Text(f"{item['where']}: {item['error']}"))
    if report.invalid_rows > 20:
        console.print(f"... and {report.invalid_rows - 20} more invalid rows")
    print_report_summary(report.data_report)
    for example in report.examples:
        shown = {k: v for k, v in example.items() if k != "meta"}
        console.print(Text(f"{example['meta']['source']}:{example['meta']['line']} ", style="dim")
                      + Text(json.dumps(shown, ensure_ascii=False)[:400]))
