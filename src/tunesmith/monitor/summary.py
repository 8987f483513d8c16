"""`tunesmith monitor RUN_DIR`: the served run's windows, drift, feedback and alerts from its
store, in the terminal, and whether retraining is advised, and why.

Retraining is advised when users' corrections or the traffic say the model no longer fits:
- a drift alert fired (the traffic moved away from the training data), or
- the negative-feedback rate of the recent windows is above its alert threshold, or
- the canary (the test examples replayed) fell below the evaluation's CI, or
- at least MIN_CORRECTIONS corrected answers are waiting to be exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.formatting import pct
from tunesmith.monitor.live import feedback_counts, still_firing
from tunesmith.monitor.store import Store
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir

MIN_CORRECTIONS = 20
RECENT_WINDOWS = 5


@dataclass
class Advice:
    retrain: bool
    reasons: list[str] = field(default_factory=list)


def read(run: RunDir, recipe: Recipe, store_url: str | None = None) -> dict[str, Any]:
    store = Store.open_existing(store_url or recipe.monitor.store or run.monitor_db,
                                f"Serve the run first: tunesmith serve {run.root}")
    try:
        return {"windows": store.recent_windows(), "alerts": store.recent_alerts(),
                "requests": store.count("requests"), "feedback": feedback_counts(store.rated())}
    finally:
        store.close()


def advise(summary: dict[str, Any], recipe: Recipe) -> Advice:
    reasons = []
    rules = {r.metric: r.above for r in recipe.monitor.alerts}
    fired = {rule.split(">")[0] for rule in still_firing(summary["alerts"])}
    recent = summary["windows"][-RECENT_WINDOWS:]
    if "drift" in fired:
        scores = [w["drift"] for w in recent if w.get("drift") is not None]
        reasons.append("drift: the requests moved away from the training data (drift score "
                       f"{max(scores, default=0):.2f} in the last {len(recent)} windows)")
    negative = [w["negative_feedback_rate"] for w in recent if w.get("negative_feedback_rate") is not None]
    if negative and "negative_feedback_rate" in rules and max(negative) > rules["negative_feedback_rate"]:
        reasons.append(f"feedback: {max(negative):.0%} of the ratings in a recent window were negative")
    if "canary_drop" in fired:
        reasons.append("canary: the test examples replayed score below the evaluation's CI")
    corrections = summary["feedback"]["corrections"]
    if corrections >= MIN_CORRECTIONS:
        reasons.append(f"data: {corrections} corrected answers are ready (tunesmith feedback export)")
    return Advice(bool(reasons), reasons)


def show(summary: dict[str, Any], advice: Advice, run: Path) -> None:
    from rich.table import Table

    from tunesmith.console import out

    windows = summary["windows"]
    table = Table(title=f"{run}: {summary['requests']} requests logged, last {min(len(windows), 10)} windows")
    for column in ("window end", "requests", "p95 ms", "errors", "cache", "fallback", "drift", "-feedback"):
        table.add_column(column, justify="right")
    for w in windows[-10:]:
        table.add_row(_time(w["end"]), str(w["requests"]), f"{w['p95_latency_ms']:.0f}",
                      f"{w['error_rate']:.1%}", f"{w['cache_hit_rate']:.1%}", f"{w['fallback_rate']:.1%}",
                      _num(w.get("drift")), _num(w.get("negative_feedback_rate")))
    out.print(table)
    f = summary["feedback"]
    accuracy = (f" -> online accuracy {pct(f['online_accuracy'], f['online_accuracy_ci'])}"
                if f["online_accuracy"] is not None else "")
    out.print(f"feedback: {f['total']} ratings ({f['positive']} +1, {f['negative']} -1){accuracy}, "
              f"{f['corrections']} corrections")
    for alert in summary["alerts"][:5]:
        out.print(f"alert {alert['state']}: {alert['rule']} at {_time(alert['time'])}: {alert['message']}")
    if advice.retrain:
        out.print("retraining advised:")
        for reason in advice.reasons:
            out.print(f"  - {reason}")
        out.print(f"  next: tunesmith feedback export {run} --out feedback/, then train on it")
    else:
        out.print("retraining not advised: no drift or feedback alert, too few corrections to learn from")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _time(epoch: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch))
