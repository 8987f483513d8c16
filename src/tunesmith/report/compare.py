"""`tunesmith compare RUN_A RUN_B [...]`: what changed between runs, and did it matter.

Prints the recipe keys that differ, then for every evaluation set the fine-tuned score of
each run with its 95% CI and its delta against the first run. When two runs scored the same
examples (same set, same references in the same order) the delta is paired: a bootstrap over
the per-example score differences, whose CI decides significance (*). Otherwise the delta is
marked unpaired and no significance is claimed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import ConfigError
from tunesmith.evaluate.stats import paired_bootstrap
from tunesmith.figures import html_table, page
from tunesmith.report.card import pct
from tunesmith.rundir import RunDir, read_json, read_jsonl, write_text

IGNORED_PREFIXES = ("output.", "tune.")
"""Where a run is written and how a search was set up do not change what a run trained."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _load(path: Path) -> dict[str, Any]:
    run = RunDir(Path(path))
    summary = run.eval_summary
    if not run.recipe.exists() or not summary.exists():
        raise ConfigError(f"{path}: not an evaluated run directory (needs recipe.yaml and "
                          "eval/summary.json). Run `tunesmith eval` on it first.")
    predictions_file = run.predictions
    predictions = read_jsonl(predictions_file) if predictions_file.exists() else []
    return {"name": Path(path).name, "recipe": _flatten(yaml.safe_load(run.recipe.read_text())),
            "summary": read_json(summary), "predictions": predictions}


def _scores(run: dict[str, Any], set_name: str) -> tuple[list[str], list[float]]:
    rows = sorted((r for r in run["predictions"] if r["set"] == set_name), key=lambda r: r["index"])
    return [r["reference"] for r in rows], [r.get("finetuned_score") or 0.0 for r in rows]


def compare(paths: list[str | Path]) -> dict[str, Any]:
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run directories.")
    runs = [_load(Path(p)) for p in paths]
    keys = sorted(set().union(*(r["recipe"] for r in runs)))
    diff = {k: [r["recipe"].get(k) for r in runs] for k in keys
            if not k.startswith(IGNORED_PREFIXES) and len({repr(r["recipe"].get(k)) for r in runs}) > 1}
    first = runs[0]
    sets: dict[str, list[dict[str, Any]]] = {}
    for set_name in first["summary"]["sets"]:
        refs_a, scores_a = _scores(first, set_name)
        entries = []
        for run in runs:
            row = run["summary"]["sets"].get(set_name)
            if row is None:
                entries.append({"run": run["name"], "missing": True})
                continue
            entry = {"run": run["name"], "value": row.get("finetuned"), "ci": row.get("finetuned_ci")}
            if run is not first:
                refs_b, scores_b = _scores(run, set_name)
                if refs_a and refs_a == refs_b:
                    entry["delta"] = paired_bootstrap(scores_a, scores_b)
                    entry["delta"]["paired"] = True
                    entry["delta"]["significant"] = (entry["delta"]["ci_low"] > 0
                                                     or entry["delta"]["ci_high"] < 0)
                else:
                    entry["delta"] = {"delta": (row.get("finetuned") or 0) - (first["summary"]["sets"][
                        set_name].get("finetuned") or 0), "paired": False, "significant": False}
            entries.append(entry)
        sets[set_name] = entries
    validation = {r["name"]: r["summary"].get("validation", {}).get("finetuned", {}).get("perplexity")
                  for r in runs}
    return {"runs": [r["name"] for r in runs], "metric": first["summary"]["metric"], "recipe_diff": diff,
            "sets": sets, "validation_perplexity": validation}


def _delta_cell(entry: dict[str, Any]) -> str:
    delta = entry.get("delta")
    if delta is None:
        return "(reference)" if not entry.get("missing") else "-"
    text = f"{100 * delta['delta']:+.1f} pts"
    if delta.get("paired"):
        text += f" [{100 * delta['ci_low']:+.1f}, {100 * delta['ci_high']:+.1f}]"
        text += " *" if delta["significant"] else ""
    else:
        text += " (unpaired: different examples)"
    return text


def print_comparison(result: dict[str, Any]) -> None:
    from rich.table import Table

    from tunesmith.console import out as console
    recipe = Table(title="recipe differences")
    recipe.add_column("key")
    for name in result["runs"]:
        recipe.add_column(name)
    for key, values in result["recipe_diff"].items():
        recipe.add_row(key, *[str(v) for v in values])
    console.print(recipe if result["recipe_diff"] else "recipes are identical")
    table = Table(title=f"fine-tuned {result['metric']}: delta vs {result['runs'][0]} "
                        "(95% CI; * = significant)")
    for column in ("set", "run", "score", "delta"):
        table.add_column(column)
    for set_name, entries in result["sets"].items():
        for entry in entries:
            table.add_row(set_name, entry["run"], pct(entry.get("value"), entry.get("ci")),
                          _delta_cell(entry))
    console.print(table)
    console.print("validation perplexity: " + ", ".join(
        f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in result["validation_perplexity"].items()),
        highlight=False)


def write_comparison_html(result: dict[str, Any], path: Path) -> None:
    body = [f"<h1>tunesmith compare: {' vs '.join(result['runs'])}</h1>", "<h2>Recipe differences</h2>",
            html_table([[k, *[str(v) for v in vs]] for k, vs in result["recipe_diff"].items()],
                       ["key", *result["runs"]]),
            f"<h2>Fine-tuned {result['metric']}</h2>",
            html_table([[s, e["run"], pct(e.get("value"), e.get("ci")), _delta_cell(e)]
                        for s, entries in result["sets"].items() for e in entries],
                       ["set", "run", "score (95% CI)", "delta vs first run"])]
    write_text(path, page("tunesmith compare", "".join(body)))
