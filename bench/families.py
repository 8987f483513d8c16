"""The decoder and the encoder on the demo's tickets, side by side (README, "Choosing with
numbers"): category accuracy per set with its CI, the paired delta (encoder - decoder, ticket by
ticket: the decoder's JSON `category` against the encoder's label), training time and peak
memory, and time per ticket in evaluation.

    tunesmith demo && tunesmith demo --family encoder
    .venv/bin/python bench/families.py [--decoder runs/demo] [--encoder runs/demo-encoder]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from tunesmith.evaluate.stats import paired_bootstrap
    from tunesmith.formatting import pct
    from tunesmith.records import answer_field

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", type=Path, default=Path("runs/demo"))
    parser.add_argument("--encoder", type=Path, default=Path("runs/demo-encoder"))
    args = parser.parse_args()
    field = "category"
    runs = {"decoder": args.decoder, "encoder": args.encoder}
    table = Table(title="decoder vs encoder on the same tickets: category accuracy (95% CI)")
    for column in ("", "decoder", "encoder", "encoder - decoder (paired)"):
        table.add_column(column)
    decoded, encoded = _rows(args.decoder), _rows(args.encoder)
    for name in sorted({r["set"] for r in decoded}):
        dec = [r for r in decoded if r["set"] == name]
        enc = [r for r in encoded if r["set"] == name]
        if [r["index"] for r in dec] != [r["index"] for r in enc]:
            raise SystemExit(f"{name}: the two runs did not score the same examples")
        a = [float(answer_field(r["finetuned_prediction"], field) == answer_field(r["reference"], field))
             for r in dec]
        b = [float(r["finetuned_prediction"] == r["reference"]) for r in enc]
        paired = paired_bootstrap(a, b)
        star = " *" if paired["significant"] else ""
        table.add_row(f"{name} ({len(a)})", pct(sum(a) / len(a)), pct(sum(b) / len(b)),
                      f"{100 * paired['delta']:+.1f} pts [{100 * paired['ci_low']:+.1f}, "
                      f"{100 * paired['ci_high']:+.1f}]{star}")
    summaries = {k: json.loads((v / "train" / "summary.json").read_text()) for k, v in runs.items()}
    evals = {k: json.loads((v / "eval" / "summary.json").read_text()) for k, v in runs.items()}
    table.add_row("training", *(f"{s['steps']} steps, {s['runtime_seconds']:.0f} s"
                                for s in summaries.values()), "")
    table.add_row("peak memory", *(f"{(s.get('peak_memory_bytes') or 0) / 2**30:.2f} GiB"
                                   for s in summaries.values()), "")
    table.add_row("per ticket (evaluation)", *(f"{1000 / e['generation_examples_per_second']:.1f} ms"
                                               for e in evals.values()), "")
    Console().print(table)


if __name__ == "__main__":
    main()
