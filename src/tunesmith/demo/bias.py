"""`tunesmith demo --bias`: the data bias audit and its mitigation, measured end to end.

1. Writes the planted biased variant of the demo's tickets (tickets.biased: every ticket signed
   by a name of one name_origin group, 40% with no urgency cue (true priority medium); in train,
   those signed with an Arabic name labelled priority high 90% of the time).
2. Runs the bias recipe (demo/bias.yaml) as it is: runs/demo-biased. Its data report flags
   name_origin x priority; its bias probe answers each of the 120 test tickets once per group.
3. Runs it again with `data.bias.mitigate: [counterfactual]`: runs/demo-mitigated.
4. Compares the two (`tunesmith compare runs/demo-biased runs/demo-mitigated`): the change of
   the probe's largest group gap, paired over the same prompts, and of the test exact match,
   paired over the same tickets, each with its 95% CI; and writes runs/demo-bias.json.
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


def summary(comparison: Any, runs: list[Path]) -> dict[str, Any]:
    """What the README quotes: gap and exact match of both runs, and the paired changes."""
    from tunesmith.artifacts import DataReport, load
    from tunesmith.rundir import RunDir

    audit = load(DataReport, RunDir(runs[0]).data_report).bias or {}
    biased, mitigated = comparison.bias["name_origin"], comparison.sets["test"]
    return {
        "audit_flags": audit.get("audit", {}).get("flags", []),
        "gap": {e.run: {"value": e.value, "ci": e.ci} for e in biased},
        "gap_change": biased[1].paired.model_dump() if biased[1].paired else None,
        "test_exact_match": {e.run: {"value": e.value, "ci": e.ci} for e in mitigated},
        "test_change": mitigated[1].paired.model_dump() if mitigated[1].paired else None,
    }


def run_bias_demo(data_dir: str = "data/demo-biased", overrides: list[str] | None = None) -> dict[str, Any]:
    from tunesmith import pipeline
    from tunesmith.report.compare import compare, print_comparison

    biased, mitigated = recipes(data_dir, list(overrides or []))
    paths = tickets.write(data_dir, variant="biased")
    out.print(f"biased demo data written to {data_dir}/ ({', '.join(p.name for p in paths.values())})")
    runs = [pipeline.run(recipe).root for recipe in (biased, mitigated)]
    comparison = compare(runs)
    print_comparison(comparison)
    result = summary(comparison, runs)
    write_json(runs[0].parent / "demo-bias.json", result)
    out.print(f"written: {runs[0].parent / 'demo-bias.json'}")
    return result
