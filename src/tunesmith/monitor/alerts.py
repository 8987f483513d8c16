"""Alert rules judged on every window, with hysteresis: a rule fires when its metric stays above
`above` for `windows` windows in a row, and clears only once it falls below `clear_below`, so a
metric that hovers at the threshold does not fire and clear on every window (no alert storms).

An alert (firing or resolved) is a structured log event, the `tunesmith_alert_firing` gauge, a
row in the store, and a POST to the webhook URL in `monitor.webhook_env` when that is set.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tunesmith.events import event
from tunesmith.monitor.metrics import Metrics
from tunesmith.monitor.store import Store
from tunesmith.recipe import AlertRule

WEBHOOK_TIMEOUT_SECONDS = 5


@dataclass
class RuleState:
    rule: AlertRule
    firing: bool = False
    above_for: int = 0

    @property
    def name(self) -> str:
        return f"{self.rule.metric}>{self.rule.above:g}"


@dataclass
class AlertEvent:
    rule: str
    state: str
    """firing or resolved."""
    value: float
    threshold: float
    message: str
    time: float = field(default_factory=time.time)


class Alerts:
    def __init__(self, rules: list[AlertRule], metrics: Metrics | None = None, store: Store | None = None,
                 webhook_url: str | None = None) -> None:
        self.states = [RuleState(rule) for rule in rules]
        self.metrics, self.store, self.webhook_url = metrics, store, webhook_url
        self.history: list[AlertEvent] = []
        self._sender: ThreadPoolExecutor | None = None
        for state in self.states:
            if metrics is not None:
                metrics.alerts.labels(rule=state.name).set(0)

    @property
    def firing(self) -> list[str]:
        return [s.name for s in self.states if s.firing]

    def evaluate(self, values: dict[str, float | None]) -> list[AlertEvent]:
        """Judge every rule on one window's values (a metric absent or None is not judged)."""
        changes = []
        for state in self.states:
            value = values.get(state.rule.metric)
            if value is None:
                continue
            change = self._step(state, float(value))
            if change is not None:
                changes.append(change)
                self._announce(state, change)
        return changes

    def _step(self, state: RuleState, value: float) -> AlertEvent | None:
        rule = state.rule
        if state.firing:
            if value < rule.clear:
                state.firing, state.above_for = False, 0
                return AlertEvent(state.name, "resolved", value, rule.clear,
                                  f"{rule.metric} back to {value:.4g} (below {rule.clear:g})")
            return None
        state.above_for = state.above_for + 1 if value > rule.above else 0
        if state.above_for >= rule.windows:
            state.firing = True
            return AlertEvent(state.name, "firing", value, rule.above,
                              f"{rule.metric} is {value:.4g}, above {rule.above:g} "
                              f"for {state.above_for} window(s)")
        return None

    def _announce(self, state: RuleState, change: AlertEvent) -> None:
        self.history = [*self.history[-99:], change]
        event("alert", rule=change.rule, state=change.state, value=change.value, threshold=change.threshold,
              message=change.message)
        if self.metrics is not None:
            self.metrics.alerts.labels(rule=state.name).set(1 if state.firing else 0)
        if self.store is not None:
            self.store.add_alert(change.rule, change.state, change.value, change.threshold, change.message)
        if self.webhook_url:  # one sender thread: the webhook hears alerts in the order they happened
            if self._sender is None:
                self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunesmith-webhook")
            self._sender.submit(post_webhook, self.webhook_url, change)


def post_webhook(url: str, change: AlertEvent) -> bool:
    """POST the alert as JSON; a failing webhook is logged, never raised."""
    body = json.dumps(vars(change)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
            return 200 <= response.status < 300
    except Exception as error:
        event("webhook_error", rule=change.rule, error=f"{type(error).__name__}: {error}")
        return False


def webhook_from_env(variable: str) -> str | None:
    return os.environ.get(variable) or None
