"""GRPO's rollouts both ways (after `tunesmith demo`): TRL's own `generate` against tunesmith's
batched engine (train.rl.rollouts: trl / tunesmith), in one run of this script, on the demo's SFT
adapter and training tickets, with the recipe `tunesmith demo --rl` trains (2 tickets x 4 answers
a step, up to 24 new tokens, temperature 1).

    .venv/bin/python bench/rollouts.py [--run runs/demo] [--steps 4] [--engines trl,tunesmith]

On CUDA with vllm installed, `--engines trl,tunesmith,vllm` adds TRL's vLLM colocate mode (not run
here: no GPU).

Each engine trains `--steps` GRPO steps from the same adapter and seed in a fresh process; printed
per engine, from train/log.jsonl (the first step left out: it warms the kernels): the rollouts'
tokens/s (answer tokens over the time in rollouts), the rollouts' share of the step time, and the
ratio tunesmith / trl. Both sample the same answers (the same seed and the same sampling), so the
rewards per step agree, which the script checks.

Measured (2-core CPU, fp32, `--steps 8`, steps 2-8): trl 30.1 tokens/s, 39.0% of a 9.1 s step;
tunesmith 36.6 tokens/s (1.21x), 33.2% of an 8.8 s step; the same rewards at every step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ENGINES = ("trl", "tunesmith", "vllm")


def measure(run: Path, engine: str, steps: int, out: Path) -> list[dict]:
    from tunesmith import pipeline
    from tunesmith.demo.rl import arms
    from tunesmith.recipe import load_recipe

    overrides = [o for o in arms(run, 42)["grpo"] if not o.startswith(("name=", "train.max_steps="))]
    recipe = load_recipe(run / "recipe.yaml", [*overrides, f"name=rollouts-{engine}",
                                               f"train.max_steps={steps}", f"train.rl.rollouts={engine}",
                                               f"output.dir={out}"])
    pipeline.fine_tune(recipe)
    log = [json.loads(line) for line in (recipe.run_dir / "train" / "log.jsonl").read_text().splitlines()]
    return [e for e in log if "reward" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--engines", default="trl,tunesmith", help="rollouts to measure, comma-separated")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # one engine, in a child
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(measure(args.run, args.engine, args.steps, args.out)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):  # each in a fresh process: none warms another's caches
            command = [sys.executable, __file__, "--run", str(args.run), "--steps", str(args.steps),
                       "--engine", engine, "--out", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    rates = {}
    for engine, steps in results.items():
        kept = steps[1:] or steps
        rate = statistics.fmean(s["rollout/tokens_per_second"] for s in kept)
        share = statistics.fmean(s["rollout/seconds"] / s["step_time"] for s in kept)
        rates[engine] = rate
        print(f"{engine:10} rollouts {rate:6.1f} tokens/s, {100 * share:4.1f}% of the step "
              f"({statistics.fmean(s['step_time'] for s in kept):.1f} s a step)")
    if "trl" in rates:
        for engine in rates.keys() - {"trl"}:
            print(f"{engine} / trl: {rates[engine] / rates['trl']:.2f}x")
    if {"trl", "tunesmith"} <= results.keys():
        same = [a["reward"] for a in results["trl"]] == [b["reward"] for b in results["tunesmith"]]
        print("same rewards per step (trl, tunesmith):", "yes" if same else "no (they sampled differently)")


if __name__ == "__main__":
    main()
