"""`tunesmith demo --rl` (after `tunesmith demo`): does learning from rewards after SFT generalise
better than more SFT? Answered on the demo's own held-out sets, over several seeds.

For each seed, two runs continue the demo's SFT adapter (`train.init_adapter: runs/demo/model`)
for the same number of extra optimizer steps at the same learning rate, on the same training
tickets:
    runs/demo-rl-s<seed>        GRPO (`train.method: grpo`) with the `metric` (exact match against
                                the ticket's triage) and `format` (a JSON object) rewards; a step
                                is 2 tickets x 4 sampled answers
    runs/demo-sft-more-s<seed>  SFT on the demonstrations; a step is 4 tickets (the demo's batch)
Both are evaluated as the demo is (in-domain test, held-out thermostat `ood` tickets; without the
baseline, forgetting probe and bias copies, whose "before" is runs/demo's), and compared with
`tunesmith compare`: GRPO against the SFT run it started from, and against the SFT run trained
for the same extra steps; exact match paired over the same tickets with 95% CIs. The table shows
each seed and the mean [min, max]; `runs/demo-rl.json` keeps it all, with the wall time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tunesmith.console import note, out
from tunesmith.errors import ConfigError
from tunesmith.files import write_json

SEEDS = (42, 1, 2)
STEPS = 30
LR = 2e-4
"""The loop demo's continuation rate (demo/loop.py), for both arms."""
QUICK_EVAL = ["eval.baseline=false", "eval.forgetting_probe=false", "eval.bias.enabled=false"]
"""A continuation's evaluation: the sets only (its "before" is the first run's); bench/loop_spread.py too."""


def arms(run: Path, seed: int) -> dict[str, list[str]]:
    """The two continuations of `run`, as overrides of its recipe."""
    shared = [f"train.init_adapter={run / 'model'}", f"train.lr={LR}", f"train.max_steps={STEPS}",
              f"train.seed={seed}", "train.eval_steps=null", f"train.save_steps={STEPS}", *QUICK_EVAL]
    return {
        "grpo": [f"name={run.name}-rl-s{seed}", *shared, "train.method=grpo", "train.batch_size=8",
                 "train.rl.num_generations=4", "train.rl.rewards=[metric, format]",
                 "train.logging_steps=1"],
        "sft_more": [f"name={run.name}-sft-more-s{seed}", *shared],
    }


def run_rl(root: Path = Path("."), seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    from tunesmith import pipeline
    from tunesmith.demo.loop import measure
    from tunesmith.recipe import load_recipe

    run = root / "runs" / "demo"
    if not (run / "eval" / "summary.json").is_file():
        raise ConfigError(f"{run}: the demo's evaluated run is missing. Run `tunesmith demo` first "
                          "(or `make demo`), then `tunesmith demo --rl`.")
    started, results = time.time(), []
    for seed in seeds:
        runs, seconds = {}, {}
        for arm, overrides in arms(run, seed).items():
            note(f"seed {seed}: {arm} ({STEPS} steps from {run / 'model'})")
            began = time.time()
            recipe = load_recipe(run / "recipe.yaml", overrides)
            pipeline.run(recipe)
            runs[arm], seconds[arm] = recipe.run_dir, round(time.time() - began)
        results.append({"seed": seed, "seconds": seconds, "runs": {k: str(v) for k, v in runs.items()},
                        "grpo_vs_sft": measure(run, runs["grpo"]),
                        "grpo_vs_sft_more": measure(runs["sft_more"], runs["grpo"]),
                        "sft_more_vs_sft": measure(run, runs["sft_more"])})
        write_json(root / "runs" / "demo-rl.json", {"seeds": results, "steps": STEPS, "lr": LR})  # as it goes
    summary = {"seeds": results, "steps": STEPS, "lr": LR, "seconds": round(time.time() - started)}
    write_json(root / "runs" / "demo-rl.json", summary)
    show(summary)
    return summary


def delta_text(entry: dict[str, Any]) -> str:
    """A paired delta in points with its CI (`loop.measure`'s entry), * when the CI excludes 0."""
    paired = entry["paired"]
    text = f"{100 * (entry['after'] - entry['before']):+.1f}"
    if paired:
        text += f" [{100 * paired['ci_low']:+.1f}, {100 * paired['ci_high']:+.1f}]"
        text += "*" if paired["significant"] else ""
    return text


def spread_text(values: list[float]) -> str:
    """Deltas over seeds as mean [min, max]."""
    return f"{statistics.fmean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"


COMPARISONS = {"grpo_vs_sft": "GRPO - SFT", "grpo_vs_sft_more": "GRPO - (SFT + steps)",
               "sft_more_vs_sft": "(SFT + steps) - SFT"}


def show(summary: dict[str, Any]) -> None:
    from rich.table import Table

    seeds = summary["seeds"]
    table = Table(title=f"exact match after {summary['steps']} extra steps from runs/demo, points "
                        "(paired 95% CI; * excludes 0)")
    for column in ("comparison", "set", *(f"seed {r['seed']}" for r in seeds), "mean [min, max]"):
        table.add_column(column)
    for key, label in COMPARISONS.items():
        for name in ("ood", "test"):
            deltas = [100 * (r[key][name]["after"] - r[key][name]["before"]) for r in seeds]
            table.add_row(label, name, *(delta_text(r[key][name]) for r in seeds), spread_text(deltas))
    out.print(table)
    for name in ("ood", "test"):
        first = seeds[0]["grpo_vs_sft"][name]["before"]
        grpo = ", ".join(f"{100 * r['grpo_vs_sft'][name]['after']:.1f}" for r in seeds)
        more = ", ".join(f"{100 * r['sft_more_vs_sft'][name]['after']:.1f}" for r in seeds)
        out.print(f"{name}: SFT {100 * first:.1f}; GRPO {grpo}; SFT + steps {more} (%, by seed)")
    grpo_s = [r["seconds"]["grpo"] for r in seeds]
    sft_s = [r["seconds"]["sft_more"] for r in seeds]
    total = summary.get("seconds", sum(grpo_s) + sum(sft_s))
    out.print(f"wall time: GRPO {statistics.fmean(grpo_s):.0f} s a seed, SFT + steps "
              f"{statistics.fmean(sft_s):.0f} s (each with its data stage and evaluation); "
              f"all {total} s")
