"""`tunesmith demo --bias`: the data bias audit and its mitigation, measured end to end.

1. Writes the planted biased variant of the demo's tickets (tickets.biased: every ticket signed
   by a name of one name_origin group, 60% with no urgency cue (true priority medium); in train,
   all of those signed with an Arabic name labelled priority high).
2. Runs the bias recipe (demo/bias.yaml) as it is: runs/demo-biased. Its data report flags
   name_origin x priority; its bias probe answers each of the 120 test tickets once per group.
3. Runs it again with `data.bias.mitigate: [counterfactual]`: runs/demo-mitigated.
4. Compares the two (`tunesmith compare runs/demo-biased runs/demo-mitigated`): the change of
   the probe's largest group gap, paired over the same prompts, and of the test exact match,
   paired over the same tickets (and split: tickets that name the skewed group, and the rest),
   each with its 95% CI; writes runs/demo-bias.json and the comparison page runs/demo-bias.html,
   and rebuilds the mitigated run's card and report with its deltas against the biased run
   (`tunesmith report runs/demo-mitigated --against runs/demo-biased`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from tunesmith.console import out
from tunesmith.demo import tickets
from tunesmith.files import write_json
from tunesmith.recipe import Recipe, load_recipe

MITIGATED = ["name=demo-mitigated", "data.bias.mitigate=[counterfactual]"]


def recipes(data_dir: str, overrides: list[str]) -> tuple[Recipe, Recipe]:
    """The biased run's recipe and the mitigated run's (validated before anything is written)."""
    path = str(files("tunesmith.demo") / "bias.yaml")
    data = [f"data.train={Path(data_dir) / 'train.jsonl'}", f"data.test={Path(data_dir) / 'test.jsonl'}"]
    return load_recipe(path, data + overrides), load_recipe(path, data + MITIGATED + overrides)


def skewed_group(audit: dict[str, Any], dimension: str) -> str | None:
    """The group the audit found most skewed in `dimension` (its most significant flagged test)."""
    tests = audit.get("dimensions", {}).get(dimension, {}).get("tests", {})
    flagged = sorted((t for t in tests.values() if t.get("flagged")), key=lambda t: t["p_value"])
    return flagged[0]["skew"]["group"] if flagged else None


def scores_by_group(runs: list[Path], dimension: str, group: str) -> dict[str, Any]:
    """Test exact match of two runs on the tickets that name `group` and on the rest, each paired
    over the same tickets: where the planted bias acts, and where it does not (what mitigation
    may cost elsewhere)."""
    from tunesmith.data.groups import LEXICON, groups_in
    from tunesmith.evaluate.stats import paired_bootstrap
    from tunesmith.report.sources import read_run
    from tunesmith.rundir import RunDir

    before, after = (sorted((p for p in read_run(RunDir(r)).predictions() if p.set == "test"),
                            key=lambda p: p.index) for r in runs)
    if [p.prompt for p in before] != [p.prompt for p in after]:
        return {}
    named = [group in groups_in(p.prompt, LEXICON[dimension]) for p in before]
    result = {}
    for part, inside in ((f"mention {group}", True), (f"mention no {group}", False)):
        rows = [i for i, found in enumerate(named) if found == inside]
        a, b = ([run[i].finetuned_score or 0.0 for i in rows] for run in (before, after))
        if rows:
            result[part] = {"tickets": len(rows), "before": sum(a) / len(a), "after": sum(b) / len(b),
                            "change": paired_bootstrap(a, b)}
    return result


def summary(comparison: Any, runs: list[Path], dimension: str = "name_origin") -> dict[str, Any]:
    """What the README quotes: the audit's flags, gap and exact match of both runs with the paired
    changes, and exact match split by the skewed group."""
    from tunesmith.artifacts import DataReport, load
    from tunesmith.rundir import RunDir

    audit = (load(DataReport, RunDir(runs[0]).data_report).bias or {}).get("audit", {})
    gaps, exact = comparison.bias[dimension], comparison.sets["test"]
    group = skewed_group(audit, dimension)
    return {
        "audit_flags": audit.get("flags", []),
        "gap": {e.run: {"value": e.value, "ci": e.ci} for e in gaps},
        "gap_change": gaps[1].paired.model_dump() if gaps[1].paired else None,
        "test_exact_match": {e.run: {"value": e.value, "ci": e.ci} for e in exact},
        "test_change": exact[1].paired.model_dump() if exact[1].paired else None,
        "test_by_group": scores_by_group(runs, dimension, group) if group else {},
    }


def run_bias_demo(data_dir: str = "data/demo-biased", overrides: list[str] | None = None) -> dict[str, Any]:
    from tunesmith import pipeline, report
    from tunesmith.report.compare import compare, print_comparison, write_comparison_html

    biased, mitigated = recipes(data_dir, list(overrides or []))
    paths = tickets.write(data_dir, variant="biased")
    out.print(f"biased demo data written to {data_dir}/ ({', '.join(p.name for p in paths.values())})")
    runs = [pipeline.run(recipe).root for recipe in (biased, mitigated)]
    comparison = compare(runs)
    print_comparison(comparison)
    result = summary(comparison, runs)
    for part, row in result["test_by_group"].items():
        change = row["change"]
        out.print(f"test exact match, tickets that {part} ({row['tickets']}): {row['before']:.1%} -> "
                  f"{row['after']:.1%} ({change['delta'] * 100:+.1f} pts "
                  f"[{change['ci_low'] * 100:+.1f}, {change['ci_high'] * 100:+.1f}])")
    report.rebuild(runs[1], against=runs[0])  # the mitigated run's card and report show the deltas
    write_json(runs[0].parent / "demo-bias.json", result)
    write_comparison_html(comparison, runs[0].parent / "demo-bias.html")
    out.print(f"written: {runs[0].parent / 'demo-bias.json'}, {runs[0].parent / 'demo-bias.html'}")
    return result
