"""serve.guards: the scope guard's calibration and routing, the output filter, per-key rate limits,
each counted in /metrics. Servers on 127.0.0.1 only; every loop is bounded."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from serve_helpers import ScriptedEngine, running, scripted
from tunesmith.serve.app import create_app
from tunesmith.serve.guards import Guards, RateLimiter, ScopeGuard, filter_output
from tunesmith.serve.state import Fallback


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_per_key():
    """60 a minute (one a second), bursts of 2: two at once, then the third waits 1 s; half a
    second later 0.5 s; another half second, it goes. Another key has its own bucket."""
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("b") == 0


def test_full_buckets_are_forgotten_past_the_key_limit():
    """max_keys 2: keys a and b fill the table; 2 s later a is full again (dropped when c comes)
    while b, which spent both tokens and has one back, is kept with it."""
    clock = Clock()
    limiter = RateLimiter(per_minute=30, burst=2, clock=clock)
    limiter.max_keys = 2
    limiter.take("a")
    limiter.take("b"), limiter.take("b")
    clock.now += 2.0
    limiter.take("c"), limiter.take("d")
    assert sorted(limiter.buckets) == ["b", "c", "d"]
    assert limiter.take("b") == 0 and limiter.take("b") == pytest.approx(2.0)  # b had 1 token left


def test_the_output_filter_masks_personal_data():
    text, masked = filter_output('{"note": "mail jo.smith@example.com from 192.168.10.20"}')
    assert text == '{"note": "mail <EMAIL> from <IP>"}' and masked == 2
    assert filter_output("nothing here") == ("nothing here", 0)


class KeywordEncoder:
    """Texts about invoices point along x, thermostats along y (unit vectors, a little noise
    from the text's length so that distances differ)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            axis = np.array([0.0, 1.0, 0.0]) if "thermostat" in text else np.array([1.0, 0.0, 0.0])
            wobble = np.array([0.0, 0.0, 0.02 * (len(text) % 7)])
            vector = axis + wobble
            rows.append(vector / np.linalg.norm(vector))
        return np.array(rows)


def scope_guard(threshold_prompts: int = 50) -> ScopeGuard:
    encoder = KeywordEncoder()
    reference = encoder.encode([f"invoice {'x' * i}" for i in range(10)])
    guard = ScopeGuard(encoder, reference, neighbours=3)
    guard.calibrate([f"my invoice {'y' * i}" for i in range(threshold_prompts)], max_false_refusals=0.02)
    return guard


def test_the_threshold_is_the_split_conformal_rank():
    """100 validation distances 0.00 .. 0.99 at 2%: rank ceil(101 x 0.98) = 99, threshold 0.98,
    one prompt beyond it; with 20 prompts the rank (21 x 0.98 -> 21) exceeds n: the largest."""
    guard = ScopeGuard(None, np.zeros((1, 3)), neighbours=1)
    guard.distances = lambda texts: np.array([int(t) / 100 for t in texts])
    guard.calibrate([str(i) for i in range(100)], max_false_refusals=0.02)
    assert guard.threshold == pytest.approx(0.98) and guard.calibration["beyond"] == 1
    guard.calibrate([str(i) for i in range(20)], max_false_refusals=0.02)
    assert guard.threshold == pytest.approx(0.19) and guard.calibration["beyond"] == 0


def test_the_scope_guard_tells_invoices_from_thermostats():
    guard = scope_guard()
    assert guard.calibration["prompts"] == 50 and guard.calibration["beyond"] == 0
    assert guard.threshold < 0.01  # invoices sit within a few thousandths of each other
    assert guard.outside("my invoice is wrong")[0] is False
    outside, distance = guard.outside("my thermostat is cold")
    assert outside and distance == pytest.approx(1.0, abs=0.01)  # orthogonal: cosine 0


CHAT = {"model": "scripted", "temperature": 0.7,
        "messages": [{"role": "user", "content": "my invoice is wrong"}]}
AWAY = {**CHAT, "messages": [{"role": "user", "content": "the thermostat shows E5"}]}


def guarded(fallback: Fallback | None, **guards) -> tuple:
    served = scripted(ScriptedEngine(answer='{"category": "billing", "contact": "ann@example.com"}'),
                      fallback, "serve.cache_size=0", "description=Planly support tickets")
    served.guards = Guards(scope=scope_guard(), scope_message=(
        "Only requests like the training ones ({description}); this one looks different."), **guards)
    return served, create_app(lambda: served)


def metric(url: str, guard: str, outcome: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines()
                if x.startswith(f'tunesmith_guard_total{{guard="{guard}",outcome="{outcome}"}}'))
    return float(line.split()[-1])


def test_out_of_scope_prompts_go_to_the_fallback_and_answers_are_filtered():
    fixed = Fallback("fixed", "fixed-answer",
                     answer='{"category": "other", "note": "write to help@planly.io"}')
    served, app = guarded(fixed, output_filter=True)
    with running(app) as url:
        inside = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        away = httpx.post(f"{url}/v1/chat/completions", json=AWAY, timeout=30)
        counts = [metric(url, "scope", o) for o in ("passed", "fallback", "refused")]
        masked = metric(url, "output_filter", "masked")
    assert inside.headers["x-tunesmith-model"] == "scripted"
    said = [r.json()["choices"][0]["message"]["content"] for r in (inside, away)]
    assert said[0] == '{"category": "billing", "contact": "<EMAIL>"}'
    assert away.status_code == 200 and away.headers["x-tunesmith-model"] == "fixed-answer"
    assert said[1] == '{"category": "other", "note": "write to <EMAIL>"}'
    assert counts == [1, 1, 0] and masked == 2


def test_without_a_fallback_out_of_scope_prompts_are_refused_with_the_reason():
    served, app = guarded(None)
    with running(app) as url:
        away = httpx.post(f"{url}/v1/chat/completions", json=AWAY, timeout=30)
        refused = metric(url, "scope", "refused")
    assert away.status_code == 422 and away.json()["error"]["code"] == "out_of_scope"
    assert away.json()["error"]["message"] == (
        "Only requests like the training ones (Planly support tickets); this one looks different.")
    assert refused == 1


def test_each_key_is_rate_limited_on_its_own():
    served = scripted(ScriptedEngine(), None, "serve.cache_size=0")
    served.guards = Guards(rate_limiter=RateLimiter(per_minute=6, burst=2))
    app = create_app(lambda: served, api_keys=["k1", "k2"])
    with running(app) as url:
        def post(key: str) -> httpx.Response:
            return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30,
                              headers={"Authorization": f"Bearer {key}"})
        first = [post("k1").status_code for _ in range(3)]
        other = post("k2").status_code
        limited = post("k1")
        count = float(next(x for x in httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer k1"},
                                                timeout=10).text.splitlines()
                           if x.startswith('tunesmith_guard_total{guard="rate_limit"')).split()[-1])
    assert first == [200, 200, 429] and other == 200
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 10  # a token every 10 s
    assert count == 2
