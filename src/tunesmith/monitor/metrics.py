"""Prometheus metrics of a server (`GET /metrics`), in the standard names and units.

One registry per app, so that several servers in one process (tests) do not share counters.
Process CPU and memory come from prometheus-client's own process collector; GPU memory is a
gauge read at scrape time where CUDA is present. Scale replicas on `tunesmith_queue_depth`
(requests waiting), not on CPU, which a batching server keeps high.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 64)
FALLBACK_REASONS = ("timeout", "model_error", "invalid_output", "out_of_scope")
GUARD_OUTCOMES = (("scope", "fallback"), ("scope", "refused"), ("scope", "passed"),
                  ("output_filter", "masked"), ("rate_limit", "limited"))


class Metrics:
    """Every metric the server exports; the app, the batcher and the monitor update them."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.requests = Counter("tunesmith_requests", "Requests answered, by route, status and error class",
                                ["route", "status", "error_class"], registry=registry)
        self.latency = Histogram("tunesmith_request_duration_seconds", "End-to-end request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram("tunesmith_queue_wait_seconds", "Time a request waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("tunesmith_time_to_first_token_seconds",
                                     "Time from arrival to the first streamed text", buckets=LATENCY_BUCKETS,
                                     registry=registry)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens read", registry=registry)
        self.completion_tokens = Counter("tunesmith_completion_tokens", "Tokens generated", registry=registry)
        self.tokens_per_second = Gauge("tunesmith_generation_tokens_per_second",
                                       "Tokens generated per second by the last batch", registry=registry)
        self.batch_size = Histogram("tunesmith_batch_size", "Requests per generated batch",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("tunesmith_queue_depth", "Requests waiting for the model", registry=registry)
        self.cache = Counter("tunesmith_cache_lookups", "Response cache lookups by result", ["result"],
                             registry=registry)
        self.fallbacks = Counter("tunesmith_fallbacks", "Answers given by the fallback, by reason",
                                 ["reason"], registry=registry)
        self.feedback = Counter("tunesmith_feedback", "Feedback received, by rating", ["rating"],
                                registry=registry)
        self.guards = Counter("tunesmith_guard", "Requests a serve.guards guard judged, by guard and outcome",
                              ["guard", "outcome"], registry=registry)
        self.drift = Gauge("tunesmith_drift_score", "Drift statistic of the last window, by feature and test",
                           ["feature", "test"], registry=registry)
        self.alerts = Gauge("tunesmith_alert_firing", "1 while an alert rule fires", ["rule"],
                            registry=registry)
        self.gpu_memory = Gauge("tunesmith_gpu_memory_bytes", "GPU memory allocated by this process",
                                ["device"], registry=registry)
        for result in ("hit", "miss"):  # labelled series exist at zero before their first event
            self.cache.labels(result=result)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)
        for rating in ("1", "-1"):
            self.feedback.labels(rating=rating)
        for guard, outcome in GUARD_OUTCOMES:
            self.guards.labels(guard=guard, outcome=outcome)

    def observe_batch(self, size: int, tokens: int, seconds: float, waits: list[float]) -> None:
        self.batch_size.observe(size)
        if seconds > 0:
            self.tokens_per_second.set(tokens / seconds)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        self._read_gpu()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _read_gpu(self) -> None:
        if _gpus():
            import torch

            for index in range(_gpus()):
                self.gpu_memory.labels(device=str(index)).set(torch.cuda.memory_allocated(index))


@functools.cache
def _gpus() -> int:
    """CUDA devices (asked once: the first call initialises CUDA and can take a second)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> Any:
    """One sample's value from exposition text (for tests and `tunesmith monitor`)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return None
