"""`tunesmith data inspect FILE`: what is in one data file, without writing a run.

Reports the detected format, row and turn counts, token-length percentiles (with the recipe's
tokenizer), the invalid rows with their locations, a few examples, and the data stage's
report on the file (cleaning, filters, duplicate and templated-answer clusters, diversity),
computed in a temporary directory that is deleted afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.report import LengthCounter, percentiles
from tunesmith.recipe import Recipe
from tunesmith.records import as_chat


def inspect_file(path: str, recipe: Recipe, tokenizer: Any | None = None,
                 examples: int = 3) -> dict[str, Any]:
    """A report on one file. `tokenizer=None` loads the recipe model's tokenizer."""
    from tunesmith.data import load

    loaded = load(recipe, path, on_invalid="skip")
    report: dict[str, Any] = {
        "path": path,
        "format": loaded.format,
        "kind": loaded.kind,
        "rows": len(loaded.records) + len(loaded.invalid),
        "valid_rows": len(loaded.records),
        "invalid_rows": len(loaded.invalid),
        "invalid": [vars(i) for i in loaded.invalid],
        "examples": loaded.records[:examples],
        "non_text_parts_dropped": dict(loaded.non_text_parts),
    }
    tools = [r for r in loaded.records
             if r.get("tools") or any(m.get("tool_calls") for m in r.get("messages", []))]
    if tools:
        report["tool_calling_rows"] = len(tools)
    if loaded.kind == "preference":
        labels = [r["label"] for r in loaded.records if "label" in r]
        report["preference"] = {"pairs": sum("chosen" in r for r in loaded.records),
                                "desirable": sum(labels), "undesirable": len(labels) - sum(labels)}
    chats = [c for c in (as_chat(r) for r in loaded.records) if c is not None]
    if chats and loaded.kind == "chat":
        turns = [sum(m["role"] == "assistant" for m in c) for c in chats]
        report["turns"] = {"assistant_turns_total": sum(turns), "mean_per_row": sum(turns) / len(turns),
                           "max_per_row": max(turns),
                           "multi_turn_rows": sum(t > 1 for t in turns)}
    if loaded.kind == "classification":
        labels: dict[str, int] = {}
        for record in loaded.records:
            labels[record["label"]] = labels.get(record["label"], 0) + 1
        report["labels"] = dict(sorted(labels.items(), key=lambda kv: -kv[1]))
    if tokenizer is None:
        from tunesmith.models.loading import load_tokenizer

        tokenizer = load_tokenizer(recipe.model)
    report["tokenizer"] = getattr(tokenizer, "name_or_path", "")
    length = LengthCounter(tokenizer, recipe.data.system_prompt,
                           family=recipe.model.family)
    report["tokens"] = percentiles([length(r) for r in loaded.records])
    # the data stage (cleaning, dedup, split) takes demonstrations; preference data is refused there
    report["data_report"] = _stage_report(path, recipe, tokenizer) if loaded.kind != "preference" else {}
    return report


def _stage_report(path: str, recipe: Recipe, tokenizer: Any) -> dict[str, Any]:
    """The data stage on this one file alone (no split), in a throw-away run dir."""
    import tempfile

    from tunesmith import data
    from tunesmith.rundir import RunDir
    single = recipe.data.model_copy(update={
        "train": [path], "val": None, "test": None, "eval_sets": {}, "on_invalid": "skip",
        "val_fraction": 0.0, "test_fraction": 0.0})
    with tempfile.TemporaryDirectory() as scratch:
        return data.run(recipe.model_copy(update={"data": single}), RunDir(Path(scratch)),
                        tokenizer).stats


def print_report(report: dict[str, Any]) -> None:
    import json

    from rich.table import Table
    from rich.text import Text

    from tunesmith.console import out as console
    table = Table(title=f"{report['path']}", show_header=False)
    table.add_row("format", f"{report['format']} ({report['kind']} records)")
    table.add_row("rows", f"{report['rows']} ({report['valid_rows']} valid, "
                          f"{report['invalid_rows']} invalid)")
    if "turns" in report:
        t = report["turns"]
        table.add_row("assistant turns", f"{t['assistant_turns_total']} "
                      f"(mean {t['mean_per_row']:.2f}/row, max {t['max_per_row']}, "
                      f"{t['multi_turn_rows']} multi-turn rows)")
    if "labels" in report:
        table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in report["labels"].items()))
    if "tool_calling_rows" in report:
        table.add_row("tool calling", f"{report['tool_calling_rows']} rows with tool schemas or calls")
    if report.get("non_text_parts_dropped"):
        parts = ", ".join(f"{k}: {v}" for k, v in report["non_text_parts_dropped"].items())
        table.add_row("non-text parts", parts + " (dropped: tunesmith trains on text)")
    if "preference" in report:
        p = report["preference"]
        table.add_row("preference", f"{p['pairs']} chosen/rejected pairs" if p["pairs"] else
                      f"{p['desirable']} desirable, {p['undesirable']} undesirable answers")
        table.add_row("", "preference training (DPO/KTO) is not built yet: `data prepare` and `train` "
                      "refuse this file")
    tokens = report["tokens"]
    table.add_row("tokens per row", "  ".join(f"{k} {v:.0f}" for k, v in tokens.items())
                  + f"  ({report['tokenizer']})")
    console.print(table)
    for item in report["invalid"][:20]:
        console.print(Text("invalid ", style="red") + Text(f"{item['where']}: {item['error']}"))
    if report["invalid_rows"] > 20:
        console.print(f"... and {report['invalid_rows'] - 20} more invalid rows")
    from tunesmith.data.report import print_report_summary

    if report["data_report"]:
        print_report_summary(report["data_report"])
    for example in report["examples"]:
        shown = {k: v for k, v in example.items() if k != "meta"}
        console.print(Text(f"{example['meta']['source']}:{example['meta']['line']} ", style="dim")
                      + Text(json.dumps(shown, ensure_ascii=False)[:400]))
