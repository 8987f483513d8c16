"""What chat and text completions share: the rows asked of the engine, the cache, the answer's
headers and usage, the monitor's note, and the pieces of a streamed answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tunesmith.models.generation import GenRequest
from tunesmith.serve import protocol
from tunesmith.serve.access import note
from tunesmith.serve.answer import Answer
from tunesmith.serve.errors import ServeError
from tunesmith.serve.protocol import ANSWERED_BY
from tunesmith.serve.state import Served


def max_tokens_for(served: Served, body: protocol._Request, prompt_tokens: int) -> int:
    context = served.engine.context_length
    wanted = body.max_tokens if body.max_tokens is not None else min(
        served.recipe.serve.max_tokens, max(context - prompt_tokens, 0))
    if prompt_tokens + wanted > context:
        raise ServeError(400, f"This model's context is {context} tokens; the prompt has {prompt_tokens} and "
                              f"max_tokens asks for {wanted} more ({prompt_tokens + wanted}). Shorten the "
                              "prompt or lower max_tokens.", "input", "context_length_exceeded", "max_tokens")
    return wanted


def rows(prompt: str, body: protocol._Request, max_tokens: int, logprobs: int | None = None,
          on_text: list[Callable[[str], None]] | None = None) -> list[GenRequest]:
    return [GenRequest(prompt, max_tokens, body.temperature, body.top_p, body.seed, body.stop, logprobs,
                       on_text[i] if on_text else None) for i in range(body.n)]


def cached(served: Served, route: str, body: protocol._Request) -> tuple[str | None, Any]:
    if body.stream or not body.deterministic or served.recipe.serve.cache_size == 0:
        return None, None
    key = served.cache.key(route, served.name, body.model_dump(mode="json"))
    hit = served.cache.get(key)
    served.metrics.cache.labels(result="miss" if hit is None else "hit").inc()
    return key, hit


def answered(payload: Any, model: str, request: Request, cached: bool = False) -> JSONResponse:
    headers = {ANSWERED_BY: model, "X-Request-Id": request.state.request_id}
    if cached:
        headers["X-Tunesmith-Cache"] = "hit"
    return JSONResponse(payload, headers=headers)


def finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def note_answer(request: Request, prompt: Any, user_text: str, result: Answer, response: str) -> None:
    counted = usage(result)
    note(request, prompt=prompt, user_text=user_text, response=response, prompt_tokens=counted.prompt_tokens,
         completion_tokens=counted.completion_tokens, fallback_reason=result.fallback_reason)


def usage(result: Answer) -> protocol.Usage:
    prompt = result.results[0].prompt_tokens if result.results else 0
    completion = sum(r.completion_tokens for r in result.results)
    return protocol.Usage(prompt_tokens=prompt, completion_tokens=completion,
                          total_tokens=prompt + completion)


async def until_disconnect(request: Request, work) -> Answer:
    """`work`, cancelled (and its rows stopped) if the client goes away first."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if not done and await request.is_disconnected():
            task.cancel()
            raise ServeError(499, "The client closed the request.", "input", "client_closed")
    return task.result()


def senders(served: Served, n: int) -> tuple[asyncio.Queue, list[Callable[[str], None]] | None]:
    """A queue of (choice, text) pieces and, per choice, the engine's callback that fills it from
    its thread; no callbacks with serve.guards.output_filter (the text is sent whole, masked)."""
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    if served.guards.output_filter:
        return pieces, None
    return pieces, [lambda text, i=i: loop.call_soon_threadsafe(pieces.put_nowait, (i, text))
                    for i in range(n)]


async def streamed(work: asyncio.Future, pieces: asyncio.Queue,
                    request: Request) -> AsyncIterator[tuple[int, str]]:
    """The pieces as they come while `work` answers, then what is left; the first one's time is
    the request's time to first token."""
    first = None
    while not (work.done() and pieces.empty()):
        try:
            index, text = await asyncio.wait_for(pieces.get(), timeout=0.05)
        except TimeoutError:
            continue
        if first is None:
            first = time.monotonic() - request.state.started
            note(request, first_token=first)
        yield index, text


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
