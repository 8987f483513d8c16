"""`tunesmith compare RUN_A RUN_B [...]`: what changed between runs, and did it matter.

Prints the recipe keys that differ, then for every evaluation set the fine-tuned score of
each run with its 95% CI and its delta against the first run. When two runs scored the same
examples (same set, same references in the same order) the delta is paired: a bootstrap over
the per-example score differences, whose CI decides significance (*). Otherwise the delta is
marked unpaired and no significance is claimed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.artifacts import Paired, Prediction
from tunesmith.errors import ConfigError
from tunesmith.evaluate.stats import paired_bootstrap, paired_gap
from tunesmith.explain import json_problem
from tunesmith.files import read_json, write_text
from tunesmith.formatting import delta, number, pct, points
from tunesmith.render import render
from tunesmith.report.sources import RunRecord, read_run
from tunesmith.rundir import RunDir, flatten, location_problem

IGNORED_PREFIXES = ("output.", "tune.")
"""Where a run is written and how a search was set up do not change what a run trained."""


@dataclass
class Entry:
    """One run's fine-tuned score on one set, and its difference from the first run's."""
    run: str
    value: float | None = None
    ci: tuple[float, float] | None = None
    missing: bool = False
    paired: Paired | None = None
    unpaired_delta: float | None = None
    """The difference of the two scores when the runs scored different examples."""


@dataclass
class Comparison:
    runs: list[str]
    metric: str
    recipe_diff: dict[str, list[Any]]
    sets: dict[str, list[Entry]] = field(default_factory=dict)
    bias: dict[str, list[Entry]] = field(default_factory=dict)
    """Per probed dimension, each run's largest group gap and its change against the first run's
    (paired when both probed the same test prompts: data.bias.mitigate measured)."""
    validation_perplexity: dict[str, float | None] = field(default_factory=dict)


def _load(path: Path) -> RunRecord:
    problem = location_problem(path)
    if problem:
        raise ConfigError(f"{problem}.")
    run = RunDir(Path(path))
    if not run.recipe.exists() or not run.eval_summary.exists():
        raise ConfigError(f"{path}: not an evaluated run directory (needs recipe.yaml and "
                          "eval/summary.json). Run `tunesmith eval` on it first.")
    return read_run(run)


def _scores(predictions: list[Prediction], set_name: str) -> tuple[list[str], list[float]]:
    rows = sorted((r for r in predictions if r.set == set_name), key=lambda r: r.index)
    return [r.reference for r in rows], [r.finetuned_score or 0.0 for r in rows]


def _entries(runs: list[RunRecord], names: list[str], set_name: str) -> list[Entry]:
    first = runs[0]
    refs_a, scores_a = _scores(first.predictions(), set_name)
    entries = [Entry(names[0], first.evaluation.sets[set_name].finetuned.value,
                     first.evaluation.sets[set_name].finetuned.ci)]
    for run, name in zip(runs[1:], names[1:], strict=True):
        row = run.evaluation.sets.get(set_name)
        if row is None:
            entries.append(Entry(name, missing=True))
            continue
        entry = Entry(name, row.finetuned.value, row.finetuned.ci)
        refs_b, scores_b = _scores(run.predictions(), set_name)
        if refs_a and refs_a == refs_b:
            entry.paired = Paired.model_validate(paired_bootstrap(scores_a, scores_b))
        else:
            entry.unpaired_delta = (row.finetuned.value or 0) - (entries[0].value or 0)
        entries.append(entry)
    return entries


def _bias_entries(runs: list[RunRecord], names: list[str], dimension: str) -> list[Entry]:
    first = runs[0].evaluation.bias.dimensions[dimension]
    same_test = _scores(runs[0].predictions(), "test")[0]
    entries = [Entry(names[0], first.gap, first.gap_ci)]
    for run, name in zip(runs[1:], names[1:], strict=True):
        other = run.evaluation.bias.dimensions.get(dimension) if run.evaluation.bias else None
        if other is None or not other.prompts:
            entries.append(Entry(name, missing=True))
            continue
        entry = Entry(name, other.gap, other.gap_ci)
        paired = (other.prompt_indices == first.prompt_indices and set(other.scores) == set(first.scores)
                  and _scores(run.predictions(), "test")[0] == same_test and first.scores)
        if paired:
            entry.paired = Paired.model_validate(paired_gap(first.scores, other.scores))
        else:
            entry.unpaired_delta = other.gap - first.gap
        entries.append(entry)
    return entries


def _benchmark_entries(runs: list[RunRecord], names: list[str], task: str) -> list[Entry]:
    """A benchmark (eval.benchmarks) as one more set: paired when both runs scored the same items."""
    def score(run: RunRecord) -> Any:
        found = run.evaluation.benchmarks
        return found.tasks.get(task) if found else None

    first = score(runs[0])
    entries = [Entry(names[0], first.finetuned.value, (first.finetuned.ci_low, first.finetuned.ci_high))]
    for run, name in zip(runs[1:], names[1:], strict=True):
        other = score(run)
        if other is None:
            entries.append(Entry(name, missing=True))
            continue
        entry = Entry(name, other.finetuned.value, (other.finetuned.ci_low, other.finetuned.ci_high))
        if other.items == first.items:
            entry.paired = Paired.model_validate(paired_bootstrap(first.scores["finetuned"],
                                                                  other.scores["finetuned"]))
        else:
            entry.unpaired_delta = other.finetuned.value - first.finetuned.value
        entries.append(entry)
    return entries


def compare(paths: list[str | Path]) -> Comparison:
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run directories.")
    runs = [_load(Path(p)) for p in paths]
    names = [Path(p).name for p in paths]
    recipes = [flatten(r.recipe.model_dump(mode="json")) for r in runs]
    keys = sorted(set().union(*recipes))
    diff = {k: [r.get(k) for r in recipes] for k in keys
            if not k.startswith(IGNORED_PREFIXES) and len({repr(r.get(k)) for r in recipes}) > 1}
    result = Comparison(names, runs[0].evaluation.metric, diff)
    for set_name in runs[0].evaluation.sets:
        result.sets[set_name] = _entries(runs, names, set_name)
    for task in (runs[0].evaluation.benchmarks.tasks if runs[0].evaluation.benchmarks else {}):
        result.sets[f"benchmark {task}"] = _benchmark_entries(runs, names, task)
    probed = runs[0].evaluation.bias.dimensions if runs[0].evaluation.bias else {}
    for dimension in [d for d, r in probed.items() if r.prompts]:
        result.bias[dimension] = _bias_entries(runs, names, dimension)
    for name, run in zip(names, runs, strict=True):
        tuned = run.evaluation.validation.finetuned
        result.validation_perplexity[name] = tuned.perplexity if tuned else None
    return result


def to_json(result: Comparison) -> dict[str, Any]:
    """The comparison as the JSON a run keeps (comparison.json) and from_json reads back."""
    def entry(e: Entry) -> dict[str, Any]:
        return {"run": e.run, "value": e.value, "ci": list(e.ci) if e.ci else None, "missing": e.missing,
                "paired": e.paired.model_dump() if e.paired else None, "unpaired_delta": e.unpaired_delta}
    return {"runs": result.runs, "metric": result.metric, "recipe_diff": result.recipe_diff,
            "sets": {k: [entry(e) for e in v] for k, v in result.sets.items()},
            "bias": {k: [entry(e) for e in v] for k, v in result.bias.items()},
            "validation_perplexity": result.validation_perplexity}


def from_json(data: dict[str, Any]) -> Comparison:
    def entry(e: dict[str, Any]) -> Entry:
        paired = Paired.model_validate(e["paired"]) if e.get("paired") else None
        ci = tuple(e["ci"]) if e.get("ci") else None
        return Entry(e["run"], e.get("value"), ci, e.get("missing", False), paired, e.get("unpaired_delta"))
    return Comparison(data["runs"], data["metric"], data["recipe_diff"],
                      {k: [entry(e) for e in v] for k, v in data["sets"].items()},
                      {k: [entry(e) for e in v] for k, v in data.get("bias", {}).items()},
                      data.get("validation_perplexity", {}))


def load_comparison(path: Path) -> Comparison | None:
    """A run's comparison.json (`tunesmith report RUN --against OTHER`), or None without one."""
    if not path.is_file():
        return None
    try:
        return from_json(read_json(path))
    except json.JSONDecodeError as error:
        problem = json_problem(error)
    except KeyError as error:
        problem = f"the key {error.args[0]!r} is missing"
    except (ValueError, TypeError, AttributeError):
        problem = "a value of the wrong kind"
    raise ConfigError(f"{path}: not a valid comparison ({problem}). Make it again with `tunesmith report RUN "
                      "--against OTHER`.")


def markdown(result: Comparison) -> str:
    """The comparison as the model card shows it: recipe differences, scores, probe gaps."""
    def rows(header: list[str], body: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(str(c) for c in row) + " |" for row in body]
    lines = [f"Against `{result.runs[0]}`, paired over the same examples (95% CI; * = significant)."]
    if result.recipe_diff:
        lines += ["", *rows(["recipe key", *result.runs],
                            [[f"`{k}`", *[str(v) for v in vs]] for k, vs in result.recipe_diff.items()])]
    lines += ["", *rows(["set", "run", f"fine-tuned {result.metric}", "delta"], score_rows(result))]
    if result.bias:
        lines += ["", *rows(["bias probe", "run", "largest gap between groups", "delta"], bias_rows(result))]
    return "\n".join(lines)


def _delta_cell(entry: Entry) -> str:
    if entry.missing:
        return "-"
    if entry.paired is not None:
        return delta(entry.paired)
    if entry.unpaired_delta is not None:
        return f"{points(entry.unpaired_delta, sign=True)} (unpaired: different examples)"
    return "(reference)"


def score_rows(result: Comparison) -> list[list[str]]:
    return [[set_name, e.run, pct(e.value, e.ci), _delta_cell(e)]
            for set_name, entries in result.sets.items() for e in entries]


def _gap_cell(entry: Entry) -> str:
    if entry.missing:
        return "-"
    shown = points(entry.value or 0.0)
    return f"{shown} [{100 * entry.ci[0]:.1f}, {100 * entry.ci[1]:.1f}]" if entry.ci else shown


def bias_rows(result: Comparison) -> list[list[str]]:
    return [[dimension, e.run, _gap_cell(e), _delta_cell(e)]
            for dimension, entries in result.bias.items() for e in entries]


def print_comparison(result: Comparison) -> None:
    from rich.table import Table

    from tunesmith.console import out as console
    recipe = Table(title="recipe differences")
    recipe.add_column("key")
    for name in result.runs:
        recipe.add_column(name)
    for key, values in result.recipe_diff.items():
        recipe.add_row(key, *[str(v) for v in values])
    console.print(recipe if result.recipe_diff else "recipes are identical")
    table = Table(title=f"fine-tuned {result.metric}: delta vs {result.runs[0]} (95% CI; * = significant)")
    for column in ("set", "run", "score", "delta"):
        table.add_column(column)
    for row in score_rows(result):
        table.add_row(*row)
    console.print(table)
    if result.bias:
        gaps = Table(title=f"bias probes: largest gap between groups, delta vs {result.runs[0]} "
                           "(95% CI, paired over the same probed prompts; * = significant)")
        for column in ("dimension", "run", "gap", "delta"):
            gaps.add_column(column)
        for row in bias_rows(result):
            gaps.add_row(*row)
        console.print(gaps)
    console.print("validation perplexity: " + ", ".join(
        f"{k} {number(v, 3)}" for k, v in result.validation_perplexity.items()), highlight=False)


def write_comparison_html(result: Comparison, path: Path) -> None:
    write_text(path, render("compare.html.j2", runs=result.runs, metric=result.metric,
                            recipe_rows=[[k, *[str(v) for v in vs]] for k, vs in result.recipe_diff.items()],
                            score_rows=score_rows(result), bias_rows=bias_rows(result)))
