"""The scope guard (serve.guards.scope) on a trained run: the threshold it calibrates on the
run's validation prompts, then the share of each evaluation set it would turn away, with a
Wilson 95% interval. On the demo (`make demo` first):

    .venv/bin/python bench/scope_guard.py runs/demo

prints the in-domain test set's false refusals (the goal: at most 2%) and the out-of-domain
thermostat tickets routed to the fallback. The same code path as the server (serve/guards.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default="runs/demo")
    parser.add_argument("--max-false-refusals", type=float, default=0.02)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunesmith.evaluate.stats import wilson
    from tunesmith.files import read_jsonl
    from tunesmith.monitor import reference
    from tunesmith.monitor.reference import prompt_and_answer
    from tunesmith.recipe import load_recipe
    from tunesmith.rundir import RunDir
    from tunesmith.serve.guards import build

    run = RunDir(Path(args.run_dir))
    recipe = load_recipe(run.recipe, ["serve.guards.scope.enabled=true",
                                      f"serve.guards.scope.max_false_refusals={args.max_false_refusals}"])
    found = reference.read(run.drift_reference, run.drift_embeddings)
    guards = build(recipe, run, found[1] if found else None)
    scope = guards.scope
    table = Table(title=f"scope guard on {args.run_dir}: threshold {scope.threshold:.4f}, calibrated on "
                        f"{scope.calibration['prompts']} validation prompts "
                        f"(max_false_refusals {args.max_false_refusals})")
    for column in ("set", "prompts", "turned away", "share [95% CI]"):
        table.add_column(column)
    result = {"threshold": scope.threshold, "calibration": scope.calibration, "sets": {}}
    for name in ["val", "test", *recipe.data.eval_sets]:
        path = run.split(name)
        if not path.is_file():
            continue
        prompts = [prompt_and_answer(row)[0] for row in read_jsonl(path)]
        away = int((scope.distances(prompts) > scope.threshold).sum())
        low, high = wilson(away, len(prompts))
        result["sets"][name] = {"prompts": len(prompts), "turned_away": away, "share": away / len(prompts),
                                "ci": [low, high]}
        table.add_row(name, str(len(prompts)), str(away),
                      f"{100 * away / len(prompts):.1f}% [{100 * low:.1f}, {100 * high:.1f}]")
    Console(width=160).print(table)
    out = REPO / "bench-out"
    out.mkdir(exist_ok=True)
    (out / "scope_guard.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
