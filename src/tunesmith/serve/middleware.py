"""The app's middleware and error handlers: request ids and the one log line per request (which
also feeds the monitor), the request-body limit, and every error in OpenAI's shape."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from tunesmith.events import event
from tunesmith.explain import validation_problem
from tunesmith.monitor.live import Observation
from tunesmith.serve.access import note
from tunesmith.serve.errors import ServeError, record
from tunesmith.serve.protocol import ANSWERED_BY


class RequestIds:
    """Every request gets an id (`request.state.request_id`, the `X-Request-Id` header) and one
    log line with its route, status, latency and who answered. Pure ASGI: Starlette's
    BaseHTTPMiddleware hid client disconnects from the handlers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id, started, seen = uuid.uuid4().hex, time.monotonic(), {}
        scope.setdefault("state", {}).update(request_id=request_id, started=started)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-Id"] = request_id
                seen.update(status=message["status"], answered_by=headers.get(ANSWERED_BY))
            await send(message)

        await self.app(scope, receive, send_with_id)
        latency = time.monotonic() - started
        event("request", request_id=request_id, route=scope.get("path"), status=seen.get("status"),
              latency_ms=round(1000 * latency, 1), answered_by=seen.get("answered_by"))
        served = getattr(scope["app"].state, "served", None) if "app" in scope else None
        if served is not None and served.monitor is not None and seen.get("status") is not None:
            noted = scope["state"].get("observed", {})
            served.monitor.observe(Observation(
                request_id, scope.get("path", ""), seen["status"], latency, model=served.name,
                answered_by=seen.get("answered_by"), **noted))


class BodyLimit:
    """413 for a request body over serve.max_body_bytes, declared or streamed (read no further)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        messages, total = [], int(declared) if declared.isdigit() else 0
        if total <= self.limit:
            total = 0
            while True:
                message = await receive()
                messages.append(message)
                total += len(message.get("body", b""))
                if total > self.limit or message["type"] != "http.request" or not message.get("more_body"):
                    break
        if total > self.limit:
            error = ServeError(413, f"The request body is over serve.max_body_bytes ({self.limit} bytes).",
                               "input", "request_too_large")
            request_id = scope.get("state", {}).get("request_id", uuid.uuid4().hex)
            record(error, request_id, scope.get("path", ""))
            scope.setdefault("state", {}).setdefault("observed", {})["error_class"] = error.kind
            response = JSONResponse(error.body(), status_code=413, headers={"X-Request-Id": request_id})
            return await response(scope, receive, send)
        replay = iter(messages)

        async def again() -> dict:
            return next(replay, None) or await receive()
        await self.app(scope, again, send)


def error_response(error: ServeError, request: Request) -> JSONResponse:
    request_id = getattr(request.state, "request_id", uuid.uuid4().hex)
    record(error, request_id, request.url.path)
    note(request, error_class=error.kind)
    headers = {**error.headers, "X-Request-Id": request_id}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def add_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ours, validation, HTTP, and anything unexpected (no traceback)."""
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return error_response(error, request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": (), "type": "", "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(ServeError(422, f"{param or 'body'}: {validation_problem(first)}", "input",
                                          "invalid_request", param), request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_response(ServeError(error.status_code, str(error.detail), "input",
                                          "not_found" if error.status_code == 404 else "http_error"), request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        event("internal_error", request_id=getattr(request.state, "request_id", None),
              error=f"{type(error).__name__}: {error}")
        return error_response(ServeError(500, "Internal server error; the request id is in the server log.",
                                          "infrastructure", "internal_error"), request)
