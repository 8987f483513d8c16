"""The server's monitor: every request is counted (metrics), stored (request log) and, once a
window of `monitor.window_size` requests is complete, judged in a background thread: p95
latency, error rate, negative feedback, drift against the training reference; then the alert
rules. The event loop only appends to lists.

    monitor = Monitor(recipe.monitor, metrics, store, reference, count_tokens)
    monitor.observe(Observation(route="/v1/chat/completions", status=200, latency=0.8, ...))
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunesmith.artifacts import DriftReference
from tunesmith.data.privacy import scrub
from tunesmith.evaluate.stats import wilson
from tunesmith.monitor.alerts import Alerts, webhook_from_env
from tunesmith.monitor.drift import Window, compare
from tunesmith.monitor.embed import load_encoder
from tunesmith.monitor.metrics import Metrics
from tunesmith.monitor.reference import answer_label
from tunesmith.monitor.store import Store
from tunesmith.monitor.threads import background_priority
from tunesmith.recipe import MonitorConfig

ANSWER_ROUTES = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Observation:
    """One finished request, as the app saw it."""
    request_id: str
    route: str
    status: int
    latency: float
    error_class: str | None = None
    model: str | None = None
    answered_by: str | None = None
    prompt: Any = None
    """The messages (chat) or prompt text (completions)."""
    user_text: str | None = None
    """What drift looks at: the last user turn, or the completion prompt."""
    response: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False
    fallback_reason: str | None = None
    first_token: float | None = None
    time: float = field(default_factory=time.time)


@dataclass
class Reference:
    stats: DriftReference
    embeddings: np.ndarray | None


def online_accuracy(rated: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of rated answers users called right (+1), with its Wilson 95% CI."""
    if not rated:
        return {"online_accuracy": None, "online_accuracy_ci": None}
    right = sum(r["rating"] > 0 for r in rated)
    return {"online_accuracy": right / len(rated), "online_accuracy_ci": wilson(right, len(rated))}


def feedback_counts(rated: list[dict[str, Any]]) -> dict[str, Any]:
    return {"total": len(rated), "positive": sum(r["rating"] > 0 for r in rated),
            "negative": sum(r["rating"] < 0 for r in rated),
            "corrections": sum(bool(r["correction"]) for r in rated), **online_accuracy(rated)}


def still_firing(alerts: list[dict[str, Any]]) -> set[str]:
    """Rules whose latest stored alert (newest first) is `firing`: what replicas sharing a store,
    or a restarted server, still have to show."""
    latest: dict[str, str] = {}
    for alert in alerts:
        latest.setdefault(alert["rule"], alert["state"])
    return {rule for rule, state in latest.items() if state == "firing"}


class Monitor:
    def __init__(self, cfg: MonitorConfig, metrics: Metrics, store: Store | None = None,
                 reference: Reference | None = None, count_tokens: Any = None) -> None:
        self.cfg, self.metrics, self.store, self.reference = cfg, metrics, store, reference
        self.count_tokens = count_tokens or (lambda text: len(text.split()))
        self.alerts = Alerts(cfg.alerts, metrics, store, webhook_from_env(cfg.webhook_env))
        self._window: list[Observation] = []
        self._window_started = time.time()
        self._judge = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunesmith-monitor",
                                         initializer=background_priority)
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.windows: list[dict[str, Any]] = []
        """Summaries of judged windows, the most recent last (bounded)."""
        self.started = time.time()
        self.observed = 0
        """Answers observed (chat and completions)."""

    # on the event loop -------------------------------------------------------------------------

    def observe(self, seen: Observation) -> None:
        m = self.metrics
        m.requests.labels(route=seen.route, status=str(seen.status), error_class=seen.error_class or "").inc()
        m.latency.labels(route=seen.route).observe(seen.latency)
        if seen.route not in ANSWER_ROUTES:
            return
        self.observed += 1
        if seen.first_token is not None:
            m.first_token.observe(seen.first_token)
        m.prompt_tokens.inc(seen.prompt_tokens or 0)
        m.completion_tokens.inc(seen.completion_tokens or 0)
        if seen.fallback_reason:
            m.fallbacks.labels(reason=seen.fallback_reason).inc()
        if self.store is not None:
            self.store.log_request(self._row(seen))
        with self._lock:
            self._window.append(seen)
            if len(self._window) < self.cfg.window_size:
                return
            window, started = self._window, self._window_started
            self._window, self._window_started = [], time.time()
        self._pending = [f for f in self._pending if not f.done()] + [
            self._judge.submit(self.judge, window, started)]

    def _row(self, seen: Observation) -> dict[str, Any]:
        keep = self.cfg.store_prompts
        prompt = json.dumps(seen.prompt, ensure_ascii=False) if keep and seen.prompt is not None else None
        response = seen.response if keep else None
        if self.cfg.scrub_pii:
            prompt = scrub(prompt)[0] if prompt else prompt
            response = scrub(response)[0] if response else response
        return {"id": seen.request_id, "time": seen.time, "route": seen.route, "model": seen.model,
                "answered_by": seen.answered_by, "status": seen.status, "error_class": seen.error_class,
                "latency_ms": round(1000 * seen.latency, 2), "prompt_tokens": seen.prompt_tokens,
                "completion_tokens": seen.completion_tokens, "cached": seen.cached,
                "fallback_reason": seen.fallback_reason, "prompt": prompt, "response": response}

    # in the monitor's thread -------------------------------------------------------------------

    def judge(self, window: list[Observation], started: float) -> dict[str, Any]:
        """A window's numbers, drift tests and alert changes (also stored and kept)."""
        latencies = [o.latency for o in window]
        answered = [o for o in window if o.status == 200 and o.user_text is not None]
        summary: dict[str, Any] = {
            "requests": len(window), "start": started, "end": time.time(),
            "p95_latency_ms": 1000 * float(np.percentile(latencies, 95)),
            "error_rate": sum(o.status >= 500 for o in window) / len(window),
            "cache_hit_rate": sum(o.cached for o in window) / len(window),
            "errors_by_class": dict(Counter(o.error_class for o in window if o.error_class)),
            "fallback_rate": sum(o.fallback_reason is not None for o in window) / len(window)}
        summary.update(self._feedback(started))
        drift = self._drift(answered)
        if drift is not None:
            summary["drift"] = drift.score
            summary["drift_tests"] = drift.as_dict()["tests"]
            for test in drift.tests:
                self.metrics.drift.labels(feature=test.feature, test=test.test).set(test.statistic)
        summary["alerts"] = [vars(a) for a in self.alerts.evaluate(summary)]
        if self.store is not None:
            self.store.add_window(summary)
        self.windows = [*self.windows[-199:], summary]
        return summary

    def _feedback(self, since: float) -> dict[str, Any]:
        if self.store is None:
            return {}
        rows = self.store.feedback_since(since)
        negative = sum(r["rating"] < 0 for r in rows)
        return {"feedback": len(rows), "negative_feedback_rate": negative / len(rows) if rows else None,
                **online_accuracy(rows)}

    def _drift(self, answered: list[Observation]):
        if self.reference is None or len(answered) < 5:
            return None
        stats = self.reference.stats
        prompts = [o.user_text or "" for o in answered]
        labels = ([answer_label(o.response or "", stats.label_field) for o in answered]
                  if stats.labels else [])
        encoder = load_encoder() if self.reference.embeddings is not None and self.cfg.embeddings else None
        window = Window(prompts, [self.count_tokens(p) for p in prompts], labels,
                        encoder.encode(prompts) if encoder else None)
        return compare(stats, self.reference.embeddings, window, self.cfg)

    def summary(self, name: str) -> dict[str, Any]:
        """What /monitor/summary, the dashboard and `tunesmith monitor` show."""
        windows = list(self.windows)
        if not windows and self.store is not None:
            windows = self.store.recent_windows()
        rated = self.store.feedback_since(0) if self.store is not None else []
        recent = (self.store.recent_alerts() if self.store is not None
                  else [vars(a) for a in reversed(self.alerts.history)])
        return {"model": name, "since": self.started, "window_size": self.cfg.window_size,
                "pending": len(self._window), "windows": windows,
                "firing": sorted(set(self.alerts.firing) | still_firing(recent)), "alerts": recent,
                "feedback": feedback_counts(rated),
                "reference": self.reference is not None,
                "thresholds": {r.metric: r.above for r in self.cfg.alerts}}

    def canary(self, drop: float) -> None:
        """A canary replay's result: how far its score fell below the evaluation's CI (points)."""
        self._pending.append(self._judge.submit(self.alerts.evaluate, {"canary_drop": drop}))

    def wait(self) -> None:
        """Until every window handed to the thread is judged (tests, shutdown)."""
        for future in list(self._pending):
            future.result()

    def close(self) -> None:
        self.wait()
        self._judge.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
