"""The loop demo (`tunesmith demo --loop`, after `tunesmith demo`): serve the demo's model, watch
it drift, feed users' corrections back, retrain from it, and measure what the loop bought.

1. `runs/demo` is served on 127.0.0.1 (a free port) with windows of 40 answers.
2. Traffic from 16 concurrent clients: 80 fresh Planly tickets (in-domain), then 120
   thermostat tickets in the loop's own wordings (`tickets.HOMEHEAT_LOOP_ISSUES`): the drift
   alert should fire on the thermostat windows and not on the Planly ones.
3. Simulated users rate every thermostat answer against the true triage: right +1; wrong -1,
   and two wrong answers in three also get the corrected JSON.
4. `feedback export` -> `feedback/sft.jsonl`: the corrections and the answers users rated +1
   (deduplicated, test prompts removed).
5. A new run, `runs/demo-loop`, continues the served adapter (`train.init_adapter`) at a fifth of
   the first run's learning rate (2e-4) for 40 steps on the demo's training data plus the
   feedback rows, oversampled to half of each batch (`data.balance.by: meta.source`), then is
   evaluated like the demo. Chosen by its spread over seeds (`bench/loop_spread.py`): with the
   corrections alone the held-out thermostat tickets gained +0.0, +18.3 and +10.0 points over
   three seeds (the corrections are the model's errors, so their labels are skewed: 30%
   feature_request against 12% of thermostat tickets); with the approved answers added, +25.0,
   +20.0, +26.7, +30.0 and +15.0 over five, every one significant, in-domain within +-0.8.
6. Measured: drift before / after the traffic moved; exact match on the demo's held-out
   `ood.jsonl` thermostat tickets (never sent, never fed back; other wordings) before / after,
   paired over the same tickets; in-domain test before / after. Written to `loop.json`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.console import note, out
from tunesmith.demo.tickets import loop_traffic
from tunesmith.errors import ConfigError
from tunesmith.files import write_json

CLIENTS = 16
WINDOW = 40
CORRECTED_SHARE = 2 / 3
"""Of the wrong answers, the share whose user also sends the right answer."""
TIMEOUT_SECONDS = 600
"""The whole traffic phase stops by itself after this long."""


@dataclass
class Traffic:
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Per request: the ticket, the served answer, its id, and whether it was right."""


async def _send(url: str, rows: list[dict], max_tokens: int) -> list[dict[str, Any]]:
    import httpx

    gate, results = asyncio.Semaphore(CLIENTS), []
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(row: dict) -> None:
            async with gate:
                body = {"messages": row["messages"][:1], "temperature": 0, "max_tokens": max_tokens}
                reply = (await client.post(f"{url}/v1/chat/completions", json=body)).json()
                results.append({"row": row, "id": reply["id"],
                                "answer": reply["choices"][0]["message"]["content"]})
        await asyncio.wait_for(asyncio.gather(*(one(r) for r in rows)), TIMEOUT_SECONDS)
    return results


def _right(answer: str, expected: str) -> bool:
    from tunesmith.evaluate.metrics import exact_match

    return exact_match(answer, expected) == 1.0


async def _rate(url: str, answered: list[dict[str, Any]]) -> dict[str, int]:
    """Simulated users: +1 for a right answer; -1 for a wrong one, with the correction for two in three."""
    import httpx

    counts = {"positive": 0, "negative": 0, "corrections": 0}
    async with httpx.AsyncClient(timeout=60) as client:
        wrong = 0
        for item in answered:
            expected = item["row"]["messages"][1]["content"]
            body: dict[str, Any] = {"response_id": item["id"], "rating": 1}
            if not _right(item["answer"], expected):
                wrong += 1
                body["rating"] = -1
                if (wrong - 1) % 3 < round(3 * CORRECTED_SHARE):
                    body["correction"] = expected
                    counts["corrections"] += 1
            counts["positive" if body["rating"] > 0 else "negative"] += 1
            (await client.post(f"{url}/v1/feedback", json=body)).raise_for_status()
    return counts


def serve_and_feed_back(run: Path) -> dict[str, Any]:
    """Steps 1-3: traffic through the served run, the windows' drift, the users' ratings."""
    from tunesmith.serve.app import create_app
    from tunesmith.serve.background import running
    from tunesmith.serve.state import load_served

    traffic = loop_traffic()
    served = load_served(str(run), [f"monitor.window_size={WINDOW}"])
    max_tokens = served.recipe.eval.max_new_tokens
    with running(create_app(lambda: served)) as url:
        note(f"serving {run} at {url}; {len(traffic['in_domain'])} Planly tickets, then "
             f"{len(traffic['drifted'])} thermostat tickets, {CLIENTS} clients")
        usual = asyncio.run(_send(url, traffic["in_domain"], max_tokens))
        _settle(served, len(usual))
        drifted = asyncio.run(_send(url, traffic["drifted"], max_tokens))
        _settle(served, len(usual) + len(drifted))
        ratings = asyncio.run(_rate(url, drifted))
        windows = list(served.monitor.windows)
        firing = list(served.monitor.alerts.firing)
    in_domain = windows[: len(usual) // WINDOW]
    shifted = windows[len(usual) // WINDOW:]
    def fired(group: list[dict]) -> bool:
        return any(a["rule"].startswith("drift") for w in group for a in w["alerts"])

    return {"windows": [{"requests": w["requests"], "drift": w.get("drift"),
                         "p95_latency_ms": w["p95_latency_ms"],
                         "alerts": [f"{a['state']} {a['rule']}" for a in w["alerts"]]} for w in windows],
            "drift_in_domain": [w.get("drift") for w in in_domain],
            "drift_thermostat": [w.get("drift") for w in shifted],
            "drift_alert_in_domain": fired(in_domain), "drift_alert_thermostat": fired(shifted),
            "firing": firing, "ratings": ratings,
            "served_right_thermostat": sum(_right(d["answer"], d["row"]["messages"][1]["content"])
                                           for d in drifted) / len(drifted)}


def _settle(served: Any, answered: int) -> None:
    deadline = time.monotonic() + 60
    while served.monitor.observed < answered and time.monotonic() < deadline:
        time.sleep(0.05)
    served.monitor.wait()


def retrain_overrides(run: Path, feedback: Path) -> list[str]:
    """Step 5's recipe, as overrides of the first run's (`bench/loop_spread.py` varies them)."""
    from tunesmith.recipe import load_recipe

    first = load_recipe(run / "recipe.yaml")
    return [f"name={run.name}-loop", f"data.train=[{first.data.train[0]}, {feedback / 'sft.jsonl'}]",
            "data.balance.by=meta.source", "data.balance.strategy=oversample",
            f"train.init_adapter={run / 'model'}", "train.lr=2e-4", "train.max_steps=40",
            "train.eval_steps=20"]


def retrain(run: Path, feedback: Path, extra: list[str] | None = None) -> Path:
    """Step 5: the served adapter, trained on the demo's data plus the users' feedback."""
    from tunesmith import pipeline
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(run / "recipe.yaml", [*retrain_overrides(run, feedback), *(extra or [])])
    pipeline.run(recipe)
    return recipe.run_dir


def measure(first: Path, second: Path) -> dict[str, Any]:
    """Step 6: each set's exact match before and after, paired over the same examples."""
    from tunesmith.report.compare import compare

    comparison = compare([first, second])
    sets = {}
    for name, entries in comparison.sets.items():
        before, after = entries
        sets[name] = {"before": before.value, "before_ci": before.ci, "after": after.value,
                      "after_ci": after.ci, "paired": after.paired.model_dump() if after.paired else None}
    return sets


def run_loop(root: Path = Path(".")) -> dict[str, Any]:
    run = root / "runs" / "demo"
    if not (run / "eval" / "summary.json").is_file():
        raise ConfigError(f"{run}: the demo's evaluated run is missing. Run `tunesmith demo` first "
                          "(or `make demo`), then `tunesmith demo --loop`.")
    started = time.time()
    watched = serve_and_feed_back(run)
    from tunesmith.monitor.export import export
    from tunesmith.recipe import load_recipe
    from tunesmith.rundir import RunDir

    feedback = root / "feedback"
    exported = export(RunDir(run), load_recipe(run / "recipe.yaml"), feedback)
    second = retrain(run, feedback)
    result = {**watched, "exported": exported.rows, "export_dropped": exported.dropped,
              "sets": measure(run, second), "seconds": round(time.time() - started)}
    write_json(second / "loop.json", result)
    show(result, second)
    return result


def show(result: dict[str, Any], second: Path) -> None:
    from rich.table import Table

    from tunesmith.artifacts import Paired
    from tunesmith.formatting import delta, pct

    drift = Table(title="drift (share of drift tests rejecting, per window of 40 answers)")
    for column in ("traffic", "windows' drift", "drift alert"):
        drift.add_column(column)
    drift.add_row("Planly tickets (as trained)", ", ".join(f"{d:.1f}" for d in result["drift_in_domain"]),
                  "fired" if result["drift_alert_in_domain"] else "no")
    drift.add_row("thermostat tickets", ", ".join(f"{d:.1f}" for d in result["drift_thermostat"]),
                  "fired" if result["drift_alert_thermostat"] else "no")
    out.print(drift)
    r = result["ratings"]
    out.print(f"users: {r['positive']} +1, {r['negative']} -1, {r['corrections']} corrections; "
              f"exported {result['exported']}")
    table = Table(title=f"exact match, demo -> {second.name} (95% CI; paired over the same examples)")
    for column in ("set", "before", "after", "delta"):
        table.add_column(column)
    for name, s in result["sets"].items():
        paired = s["paired"]
        table.add_row(name, pct(s["before"], s["before_ci"]), pct(s["after"], s["after_ci"]),
                      delta(Paired(**paired) if paired else None))
    out.print(table)
