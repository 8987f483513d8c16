"""Who may ask and what: API keys, per-caller rate limits, the scope guard; and `note`, what a
route tells the monitor about its request."""

from __future__ import annotations

import asyncio
import hmac
import math
from typing import Any

from fastapi import Depends, Request

from tunesmith.serve.errors import ServeError
from tunesmith.serve.state import Served


def note(request: Request, **fields: Any) -> None:
    """What the monitor should know of this request (see monitor.live.Observation)."""
    observed = request.scope.setdefault("state", {}).setdefault("observed", {})
    observed.update(fields)


def require_key(request: Request) -> None:
    keys = request.app.state.api_keys
    if not keys:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
        raise ServeError(401, "Incorrect or missing API key: send Authorization: Bearer <key>.", "input",
                         "invalid_api_key")


def rate_limit(request: Request) -> None:
    """serve.guards.rate_limit: a token per request from the caller's bucket (its API key, or its
    address on a server without keys); none left: 429 with Retry-After."""
    limiter = request.app.state.served.guards.rate_limiter
    if limiter is None:
        return
    given = request.headers.get("authorization", "")
    caller = given if request.app.state.api_keys else (request.client.host if request.client else "-")
    wait = limiter.take(caller)
    if wait > 0:
        request.app.state.served.metrics.guards.labels(guard="rate_limit", outcome="limited").inc()
        seconds = max(1, math.ceil(wait))
        raise ServeError(429, f"Rate limit: {60 * limiter.rate:g} requests a minute per key "
                              f"(serve.guards.rate_limit); retry in {seconds} s.", "input", "rate_limited",
                         headers={"Retry-After": str(seconds)})


async def out_of_scope(served: Served, request: Request, text: str) -> str | None:
    """serve.guards.scope: the refusal message when `text` is far from the training prompts
    (the fallback answers it when there is one), None when it may go to the model."""
    scope = served.guards.scope
    if scope is None:
        return None
    outside, distance = await asyncio.to_thread(scope.outside, text)
    note(request, scope_distance=round(distance, 4))
    outcome = ("fallback" if served.fallback else "refused") if outside else "passed"
    served.metrics.guards.labels(guard="scope", outcome=outcome).inc()
    if not outside:
        return None
    task = (served.recipe.description or "its task").strip()
    return served.guards.scope_message.replace("{description}", task)


GUARDED = [Depends(require_key), Depends(rate_limit)]
