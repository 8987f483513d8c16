"""The loop's retraining, over several seeds: is the gain on held-out thermostat tickets a
property of the recipe or of one lucky run? (after `tunesmith demo` and `tunesmith demo --loop`,
which leaves the users' feedback in `feedback/` and the served run's request log in runs/demo)

    .venv/bin/python bench/loop_spread.py [--run runs/demo] [--seeds 42 1 2] [--variant NAME ...]

For each variant and seed: re-export the feedback the variant's way, retrain from the served
adapter as `tunesmith demo --loop` does (only `train.seed` differs between seeds; the data split
stays that of the recipe), evaluate on the demo's test and held-out thermostat (`ood`) sets
without the baseline, probes and bias copies (the first run's answers are the "before"), and
print each run's paired exact-match deltas, then each variant's mean, min and max.

Measured (seeds 42, 1, 2 for both; 3 and 4 for the second), paired points on the 60 held-out
thermostat tickets / the 120 in-domain test tickets:
    corrections            +0.0 / +0.8, +18.3* / +0.8, +10.0 / +1.7         mean +9.4
    corrections+approved   +25.0* / +0.8, +20.0* / +0.8, +26.7* / -0.8, +30.0* / +0.0,
                           +15.0* / -0.8                                     mean +23.3
(* the paired 95% CI excludes zero; no in-domain change was significant.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "corrections": (False, []),
    "corrections+approved": (True, []),
}
"""name -> (approved answers in sft.jsonl, overrides on top of the loop's retraining recipe)."""
DEADLINE_SECONDS = 4 * 3600


def main() -> None:
    from rich.table import Table

    from tunesmith.console import out
    from tunesmith.demo.loop import measure, retrain
    from tunesmith.demo.rl import QUICK_EVAL, delta_text, spread_text
    from tunesmith.monitor.export import export
    from tunesmith.recipe import load_recipe
    from tunesmith.rundir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--variant", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:2])
    args = parser.parse_args()
    started, results = time.monotonic(), []
    for name in args.variant:
        approved, overrides = VARIANTS[name]
        feedback = Path("bench-out") / "loop" / name.replace(" ", "").replace(",", "-")
        recipe = load_recipe(args.run / "recipe.yaml")
        exported = export(RunDir(args.run), recipe, feedback, approved=approved)
        for seed in args.seeds:
            if time.monotonic() - started > DEADLINE_SECONDS:
                break
            tag = f"{name} seed {seed}"
            second = retrain(args.run, feedback, [*overrides, *QUICK_EVAL, f"train.seed={seed}",
                                                  f"name=loop-{list(VARIANTS).index(name)}-{seed}"])
            sets = measure(args.run, second)
            results.append({"variant": name, "seed": seed, "sft_rows": exported.rows["sft"],
                            **{k: {"before": v["before"], "after": v["after"], "paired": v["paired"]}
                               for k, v in sets.items()}})
            Path("bench-out/loop_spread.json").write_text(json.dumps(results, indent=2))  # as it goes
            out.print(f"{tag}: ood {sets['ood']['before']:.3f} -> {sets['ood']['after']:.3f}, "
                      f"test {sets['test']['before']:.3f} -> {sets['test']['after']:.3f}")
    Path("bench-out/loop_spread.json").write_text(json.dumps(results, indent=2))
    table = Table(title="the loop's retraining over seeds: exact match after - before, "
                        "points (paired 95% CI)")
    for column in ("variant", "sft rows", "seed", "thermostat (held out)", "in-domain test"):
        table.add_column(column)
    for r in results:
        table.add_row(r["variant"], str(r["sft_rows"]), str(r["seed"]), delta_text(r["ood"]),
                      delta_text(r["test"]))
    for name in args.variant:
        mine = [r for r in results if r["variant"] == name]
        if mine:
            ood = [100 * (r["ood"]["after"] - r["ood"]["before"]) for r in mine]
            test = [100 * (r["test"]["after"] - r["test"]["before"]) for r in mine]
            table.add_row(name, "", "mean [min, max]", spread_text(ood), spread_text(test))
    out.print(table)


if __name__ == "__main__":
    main()
