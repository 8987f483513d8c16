"""The FastAPI app: OpenAI-compatible routes over a `Served` model.

    GET  /health                 alive and loaded (no key needed)
    GET  /v1/models              the served model
    POST /v1/chat/completions    chat (stream, n, stop, temperature, top_p, max_tokens, seed,
                                 response_format json_object)
    POST /v1/completions         raw prompts (logprobs, echo: what log-likelihood evaluators use)

Every response carries `X-Request-Id` and, for answers, `X-Tunesmith-Model` (who answered:
the model or its fallback). Every error has OpenAI's shape and no traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from tunesmith.evaluate.metrics import parse_json_object
from tunesmith.events import event, setup_logging
from tunesmith.models.chat import with_system
from tunesmith.models.generation import Engine, GenRequest, GenResult
from tunesmith.monitor.live import Observation
from tunesmith.recipe import ServeConfig
from tunesmith.serve import canary, protocol, watch
from tunesmith.serve.answer import Answer, answer, output_check
from tunesmith.serve.errors import ServeError, record
from tunesmith.serve.reasoning import ReasoningStream, opens_thinking, split_answer
from tunesmith.serve.state import Served, describe

ANSWERED_BY = "X-Tunesmith-Model"


def create_app(load: Callable[[], Served], api_keys: list[str] | None = None,
               config: ServeConfig | None = None) -> FastAPI:
    """The app; `load()` runs in the lifespan, so /health answers only once the model is loaded.
    `config` (the recipe's serve section) sets the body limit and CORS before anything loads."""
    setup_logging()
    config = config or ServeConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.served = await asyncio.to_thread(load)
        await app.state.served.start()
        replays = asyncio.create_task(canary.run_forever(app.state.served))
        event("ready", model=app.state.served.name)
        yield
        replays.cancel()
        await app.state.served.stop()

    app = FastAPI(title="tunesmith", lifespan=lifespan, responses={
        code: {"model": protocol.ErrorResponse} for code in (400, 401, 413, 422, 429, 500, 504)})
    app.state.api_keys = [k for k in (api_keys or []) if k]
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestIds)  # added last: outermost, so a 413 gets its id and log line too
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _handlers(app)
    _routes(app)
    watch.add_routes(app, require_key)
    return app


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


def _error_response(error: ServeError, request: Request) -> JSONResponse:
    request_id = getattr(request.state, "request_id", uuid.uuid4().hex)
    record(error, request_id, request.url.path)
    note(request, error_class=error.kind)
    headers = {**error.headers, "X-Request-Id": request_id}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return _error_response(error, request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error_response(ServeError(422, f"{param or 'body'}: {first['msg']}", "input",
                                          "invalid_request", param), request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error_response(ServeError(error.status_code, str(error.detail), "input",
                                          "not_found" if error.status_code == 404 else "http_error"), request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        event("internal_error", request_id=getattr(request.state, "request_id", None),
              error=f"{type(error).__name__}: {error}")
        return _error_response(ServeError(500, "Internal server error; the request id is in the server log.",
                                          "infrastructure", "internal_error"), request)


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


def _routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return describe(request.app.state.served)

    @app.get("/v1/models", dependencies=GUARDED, response_model=protocol.ModelList)
    async def models(request: Request) -> protocol.ModelList:
        served = request.app.state.served
        return protocol.ModelList(data=[protocol.ModelCard(id=served.name, created=served.created)])

    stream = {"schema": {"type": "object", "description": "stream: true: chunks, then [DONE]"}}

    @app.post("/v1/chat/completions", dependencies=GUARDED,
              response_model=protocol.ChatCompletion,
              responses={200: {"content": {"text/event-stream": stream}}})
    async def chat(body: protocol.ChatCompletionRequest, request: Request):
        return await _chat(request.app.state.served, body, request)

    @app.post("/v1/completions", dependencies=GUARDED, response_model=protocol.Completion)
    async def completions(body: protocol.CompletionRequest, request: Request):
        return await _completion(request.app.state.served, body, request)


def _max_tokens(served: Served, body: protocol._Request, prompt_tokens: int) -> int:
    context = served.engine.context_length
    wanted = body.max_tokens if body.max_tokens is not None else min(
        served.recipe.serve.max_tokens, max(context - prompt_tokens, 0))
    if prompt_tokens + wanted > context:
        raise ServeError(400, f"This model's context is {context} tokens; the prompt has {prompt_tokens} and "
                              f"max_tokens asks for {wanted} more ({prompt_tokens + wanted}). Shorten the "
                              "prompt or lower max_tokens.", "input", "context_length_exceeded", "max_tokens")
    return wanted


def _rows(prompt: str, body: protocol._Request, max_tokens: int, logprobs: int | None = None,
          on_text: list[Callable[[str], None]] | None = None) -> list[GenRequest]:
    return [GenRequest(prompt, max_tokens, body.temperature, body.top_p, body.seed, body.stop, logprobs,
                       on_text[i] if on_text else None) for i in range(body.n)]


def _messages(served: Served, body: protocol.ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    return with_system(messages, served.recipe.data.system_prompt)


def _cached(served: Served, route: str, body: protocol._Request) -> tuple[str | None, Any]:
    if body.stream or not body.deterministic or served.recipe.serve.cache_size == 0:
        return None, None
    key = served.cache.key(route, served.name, body.model_dump(mode="json"))
    hit = served.cache.get(key)
    served.metrics.cache.labels(result="miss" if hit is None else "hit").inc()
    return key, hit


def _answered(payload: Any, model: str, request: Request, cached: bool = False) -> JSONResponse:
    headers = {ANSWERED_BY: model, "X-Request-Id": request.state.request_id}
    if cached:
        headers["X-Tunesmith-Cache"] = "hit"
    return JSONResponse(payload, headers=headers)


async def _chat(served: Served, body: protocol.ChatCompletionRequest, request: Request):
    key, hit = _cached(served, "chat", body)  # a repeat was checked the first time: answer it at once
    if hit is not None:
        note(request, cached=True, prompt=[m.model_dump(mode="json") for m in body.messages],
             user_text=_last_user(body), response=hit[0]["choices"][0]["message"]["content"])
        return _answered(hit[0], hit[1], request, cached=True)
    messages = _messages(served, body)
    prompt = served.engine.render(messages)
    max_tokens = _max_tokens(served, body, served.engine.count_tokens(prompt))
    render = _renderer(served, messages, prompt)
    refusal = await out_of_scope(served, request, _last_user(body))
    if body.stream:
        return _stream(served, body, render, max_tokens, request, messages, refusal, opens_thinking(prompt))
    json_object = body.response_format is not None and body.response_format.type == "json_object"

    def make(engine: Engine) -> list[GenRequest]:
        return _rows(render(engine), body, max_tokens)

    work = answer(served, make, request.state.request_id, output_check(served, json_object), refusal)
    result = await _until_disconnect(request, work)
    payload = _chat_payload(result, request.state.request_id, json_object, opens_thinking(prompt))
    _note_answer(request, messages, _last_user(body), result, payload["choices"][0]["message"]["content"])
    if key is not None and result.fallback_reason is None:
        served.cache.put(key, (payload, result.model))
    return _answered(payload, result.model, request)


def _chat_payload(result: Answer, request_id: str, json_object: bool, opened: bool = False) -> dict[str, Any]:
    choices = []
    for index, row in enumerate(result.results):
        reasoning, text = split_answer(row.text.strip(), opened and result.fallback_reason is None)
        if json_object:  # the object itself, without prose around it
            parsed = parse_json_object(text)
            text = json.dumps(parsed, ensure_ascii=False) if parsed is not None else text
        message = protocol.AssistantMessage(content=text, reasoning_content=reasoning)
        choices.append(protocol.ChatChoice(index=index, message=message,
                                           finish_reason=_finish(row.finish_reason)))
    return protocol.ChatCompletion(id=f"chatcmpl-{request_id}", model=result.model, choices=choices,
                                   usage=_usage(result)).model_dump(mode="json")


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _last_user(body: protocol.ChatCompletionRequest) -> str:
    return next((m.text() for m in reversed(body.messages) if m.role == "user"), "")


def _note_answer(request: Request, prompt: Any, user_text: str, result: Answer, response: str) -> None:
    usage = _usage(result)
    note(request, prompt=prompt, user_text=user_text, response=response, prompt_tokens=usage.prompt_tokens,
         completion_tokens=usage.completion_tokens, fallback_reason=result.fallback_reason)


def _usage(result: Answer) -> protocol.Usage:
    prompt = result.results[0].prompt_tokens if result.results else 0
    completion = sum(r.completion_tokens for r in result.results)
    return protocol.Usage(prompt_tokens=prompt, completion_tokens=completion,
                          total_tokens=prompt + completion)


async def _until_disconnect(request: Request, work) -> Answer:
    """`work`, cancelled (and its rows stopped) if the client goes away first."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if not done and await request.is_disconnected():
            task.cancel()
            raise ServeError(499, "The client closed the request.", "input", "client_closed")
    return task.result()


def _renderer(served: Served, messages: list[dict], prompt: str) -> Callable[[Engine], str]:
    """The prompt for an engine: the one rendered for the served model, or a fallback run's own
    (another run may have another chat template)."""
    return lambda engine: prompt if engine is served.engine else engine.render(messages)


def _stream(served: Served, body: protocol.ChatCompletionRequest, render: Callable[[Engine], str],
            max_tokens: int, request: Request, messages: list[dict],
            refusal: str | None, opened: bool = False) -> StreamingResponse:
    """Server-sent events: each choice's text as it is made, then its finish reason, then [DONE].
    With serve.guards.output_filter the text is sent whole at the end, masked (a piece already
    sent cannot be taken back)."""
    loop, user_text = asyncio.get_running_loop(), _last_user(body)
    pieces: asyncio.Queue = asyncio.Queue()
    request_id = request.state.request_id
    senders = None if served.guards.output_filter else \
        [lambda text, i=i: loop.call_soon_threadsafe(pieces.put_nowait, (i, text)) for i in range(body.n)]

    def make(engine: Engine) -> list[GenRequest]:
        return _rows(render(engine), body, max_tokens, on_text=senders)

    async def events() -> AsyncIterator[str]:
        work = asyncio.ensure_future(answer(served, make, request_id, refusal=refusal))
        completion_id, name, first = f"chatcmpl-{request_id}", served.name, None
        splitters = [ReasoningStream(opened) for _ in range(body.n)]
        for index in range(body.n):
            yield _sse(protocol.chunk(completion_id, name, index, {"role": "assistant", "content": ""}))
        try:
            while not (work.done() and pieces.empty()):
                try:
                    index, text = await asyncio.wait_for(pieces.get(), timeout=0.05)
                except TimeoutError:
                    continue
                if first is None:
                    first = time.monotonic() - request.state.started
                    note(request, first_token=first)
                for field, delta in splitters[index].feed(text):
                    yield _sse(protocol.chunk(completion_id, name, index, {field: delta}))
            result = work.result()
        except ServeError as error:
            record(error, request_id, "/v1/chat/completions")
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
            return
        finally:
            work.cancel()
        text = result.results[0].text.strip() if result.results else ""
        _note_answer(request, messages, user_text, result, text)
        for index, row in enumerate(result.results):
            if result.fallback_reason is not None or senders is None:  # not streamed: send it whole
                splitters[index] = ReasoningStream(opened and result.fallback_reason is None)
                pending = splitters[index].feed(row.text) + splitters[index].finish()
            else:
                pending = splitters[index].finish()  # what was held back as a possible tag
            for field, delta in pending:
                yield _sse(protocol.chunk(completion_id, result.model, index, {field: delta}))
            yield _sse(protocol.chunk(completion_id, result.model, index, {}, _finish(row.finish_reason)))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"X-Request-Id": request_id, "Cache-Control": "no-cache"})


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _completion(served: Served, body: protocol.CompletionRequest, request: Request):
    prompt_tokens = served.engine.count_tokens(body.prompt)
    max_tokens = _max_tokens(served, body, prompt_tokens)
    if body.stream:
        raise ServeError(400, "stream is supported on /v1/chat/completions only.", "input",
                         "unsupported_parameter", "stream")
    key, hit = _cached(served, "completions", body)
    if hit is not None:
        note(request, cached=True, prompt=body.prompt, user_text=body.prompt,
             response=hit[0]["choices"][0]["text"])
        return _answered(hit[0], hit[1], request, cached=True)
    echoed = (await asyncio.to_thread(served.engine.prompt_logprobs, body.prompt)
              if body.echo and body.logprobs is not None else None)
    if max_tokens == 0:
        result = Answer([_empty(prompt_tokens)] * body.n, served.name)
    else:
        def make(engine: Engine) -> list[GenRequest]:
            return _rows(body.prompt, body, max_tokens, body.logprobs)
        refusal = await out_of_scope(served, request, body.prompt)
        result = await _until_disconnect(request, answer(served, make, request.state.request_id,
                                                         refusal=refusal))
    payload = protocol.Completion(
        id=f"cmpl-{request.state.request_id}", model=result.model, usage=_usage(result),
        choices=[protocol.CompletionChoice(index=i, text=(body.prompt if body.echo else "") + row.text,
                                           finish_reason=_finish(row.finish_reason),
                                           logprobs=_logprobs(body, echoed, row.token_logprobs))
                 for i, row in enumerate(result.results)]).model_dump(mode="json")
    _note_answer(request, body.prompt, body.prompt, result, result.results[0].text if result.results else "")
    if key is not None and result.fallback_reason is None:
        served.cache.put(key, (payload, result.model))
    return _answered(payload, result.model, request)


def _empty(prompt_tokens: int) -> GenResult:
    return GenResult("", "length", prompt_tokens, 0, [])


def _logprobs(body: protocol.CompletionRequest, echoed: list[dict] | None,
              generated: list[dict] | None) -> protocol.Logprobs | None:
    if body.logprobs is None:
        return None
    steps = (echoed or []) + (generated or [])
    offsets, position = [], 0
    for step in steps:
        offsets.append(position)
        position += len(step["token"])
    return protocol.Logprobs(tokens=[s["token"] for s in steps], token_logprobs=[s["logprob"] for s in steps],
                             top_logprobs=[s.get("top_logprobs") for s in steps], text_offset=offsets)
