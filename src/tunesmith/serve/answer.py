"""Answering a request: the primary model through its batcher, within the request's deadline;
the answer checked against the task's output format; and the fallback when the primary raises,
times out or (if the recipe asks) answers in the wrong format. Whoever answered is named."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.answer_scores import has_format
from tunesmith.events import event
from tunesmith.models.generation import Engine, GenRequest, GenResult
from tunesmith.serve.batcher import QueueFull
from tunesmith.serve.errors import ServeError
from tunesmith.serve.guards import filter_output
from tunesmith.serve.state import Served

MakeRequests = Callable[[Engine], list[GenRequest]]
"""Builds a request's rows for an engine (a fallback run renders the prompt with its own template)."""


@dataclass
class Answer:
    results: list[GenResult]
    model: str
    """Who answered: the served model, or the fallback's name."""
    fallback_reason: str | None = None


def output_check(served: Served, json_object: bool) -> Callable[[str], bool] | None:
    """serve.output_check (or response_format json_object): does an answer have the task's format?"""
    kind = served.recipe.serve.output_check
    if kind == "none" and not json_object:
        return None
    fields = served.recipe.eval.json_fields if kind == "json_fields" else []

    return lambda text: has_format(text, fields)


async def _generate(served: Served, make: MakeRequests, timeout: float,
                    use_base: bool = False) -> list[GenResult]:
    """The rows through `served`'s batcher within `timeout`; 429 when its queue is full."""
    rows = make(served.engine)
    try:
        submitted = asyncio.gather(*(served.batcher.submit(r, use_base) for r in rows))
        # a client that went away cancels its rows after this request stopped waiting: their
        # CancelledError is expected, not a traceback for the log
        submitted.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.wait_for(submitted, timeout)
    except QueueFull:
        retry = max(1, round(served.batcher.depth / served.batcher.max_batch_size))
        raise ServeError(429, f"The server is at capacity ({served.batcher.depth} requests waiting); retry "
                              f"in {retry} s.", "infrastructure", "queue_full",
                         headers={"Retry-After": str(retry)}) from None
    finally:
        for row in rows:  # a row still running after a timeout or a failure stops at its next step
            row.cancelled = True


async def answer(served: Served, make: MakeRequests, request_id: str,
                 check: Callable[[str], bool] | None = None, refusal: str | None = None) -> Answer:
    """The answer to a request; with `refusal` (the scope guard judged it out of scope) the
    fallback's, or a 422 with that message when there is none. serve.guards.output_filter masks
    personal data in whichever answer is given."""
    if refusal is not None:
        result = await _fall_back(served, make, request_id, "out_of_scope",
                                  ServeError(422, refusal, "input", "out_of_scope"))
    else:
        result = await _primary(served, make, request_id, check)
    if served.guards.output_filter:
        for row in result.results:
            row.text, masked = filter_output(row.text)
            if masked:
                served.metrics.guards.labels(guard="output_filter", outcome="masked").inc()
    return result


async def _primary(served: Served, make: MakeRequests, request_id: str,
                   check: Callable[[str], bool] | None) -> Answer:
    timeout = served.recipe.serve.timeout_seconds
    try:
        results = await _generate(served, make, timeout)
    except ServeError:
        raise
    except TimeoutError:
        return await _fall_back(served, make, request_id, "timeout", ServeError(
            504, f"The model did not answer within serve.timeout_seconds ({timeout:g} s).",
            "infrastructure", "timeout"))
    except Exception as error:  # generation failed: the model, not the request
        event("model_error", request_id=request_id, model=served.name,
              error=f"{type(error).__name__}: {error}")
        return await _fall_back(served, make, request_id, "model_error", ServeError(
            500, f"The model failed to answer ({type(error).__name__}).", "model", "model_error"))
    if check is not None and not all(check(r.text) for r in results):
        event("output_check_failed", request_id=request_id, model=served.name)
        if served.fallback and served.fallback.on_invalid_output:
            return await _fall_back(served, make, request_id, "invalid_output", None)
    return Answer(results, served.name)


async def _fall_back(served: Served, make: MakeRequests, request_id: str, reason: str,
                     error: ServeError | None) -> Answer:
    fallback = served.fallback
    if fallback is None:
        raise error
    event("fallback", request_id=request_id, reason=reason, model=served.name, fallback=fallback.name)
    timeout = served.recipe.serve.timeout_seconds
    if fallback.kind == "fixed":
        rows = make(served.engine)
        results = [GenResult(fallback.answer, "stop", served.engine.count_tokens(r.prompt),
                             served.engine.count_tokens(fallback.answer)) for r in rows]
    elif fallback.kind == "base":
        results = await _generate(served, make, timeout, use_base=True)
    else:
        results = await _generate(fallback.served, make, timeout)
    return Answer(results, fallback.name, reason)
