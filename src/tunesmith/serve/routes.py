"""The OpenAI-compatible routes and what they do: chat completions (whole or streamed, with
reasoning_content apart), raw completions with logprobs, the cache, and the monitor's notes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tunesmith.evaluate.metrics import parse_json_object
from tunesmith.models.chat import with_system
from tunesmith.models.generation import Engine, GenRequest, GenResult
from tunesmith.serve import protocol
from tunesmith.serve.access import GUARDED, note, out_of_scope
from tunesmith.serve.answer import Answer, answer, output_check
from tunesmith.serve.errors import ServeError, record
from tunesmith.serve.protocol import ANSWERED_BY
from tunesmith.serve.reasoning import ReasoningStream, opens_thinking, split_answer
from tunesmith.serve.state import Served, describe


def add_routes(app: FastAPI) -> None:
    """/health, /v1/models, /v1/chat/completions and /v1/completions."""
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

    @app.post("/v1/completions", dependencies=GUARDED, response_model=protocol.Completion,
              responses={200: {"content": {"text/event-stream": stream}}})
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
    user_text, request_id = _last_user(body), request.state.request_id
    pieces, senders = _senders(served, body.n)

    def make(engine: Engine) -> list[GenRequest]:
        return _rows(render(engine), body, max_tokens, on_text=senders)

    async def events() -> AsyncIterator[str]:
        work = asyncio.ensure_future(answer(served, make, request_id, refusal=refusal))
        completion_id, name = f"chatcmpl-{request_id}", served.name
        splitters = [ReasoningStream(opened) for _ in range(body.n)]
        for index in range(body.n):
            yield _sse(protocol.chunk(completion_id, name, index, {"role": "assistant", "content": ""}))
        try:
            async for index, text in _streamed(work, pieces, request):
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


def _senders(served: Served, n: int) -> tuple[asyncio.Queue, list[Callable[[str], None]] | None]:
    """A queue of (choice, text) pieces and, per choice, the engine's callback that fills it from
    its thread; no callbacks with serve.guards.output_filter (the text is sent whole, masked)."""
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    if served.guards.output_filter:
        return pieces, None
    return pieces, [lambda text, i=i: loop.call_soon_threadsafe(pieces.put_nowait, (i, text))
                    for i in range(n)]


async def _streamed(work: asyncio.Future, pieces: asyncio.Queue,
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


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _completion(served: Served, body: protocol.CompletionRequest, request: Request):
    prompt_tokens = served.engine.count_tokens(body.prompt)
    max_tokens = _max_tokens(served, body, prompt_tokens)
    if body.stream:
        if body.echo:
            raise ServeError(400, "echo cannot be streamed; ask without stream.", "input",
                             "unsupported_parameter", "echo")
        refusal = await out_of_scope(served, request, body.prompt)
        return _completion_stream(served, body, max_tokens, request, refusal)
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


def _completion_stream(served: Served, body: protocol.CompletionRequest, max_tokens: int, request: Request,
                       refusal: str | None) -> StreamingResponse:
    """Server-sent events of a raw completion (what vLLM sends, and what a tunesmith server in
    front of this one forwards): each choice's text as it is made, its finish reason, the usage
    when stream_options.include_usage asks, then [DONE]."""
    request_id = request.state.request_id
    pieces, senders = _senders(served, body.n)

    def make(engine: Engine) -> list[GenRequest]:
        return _rows(body.prompt, body, max_tokens, body.logprobs, on_text=senders)

    def event(model: str, index: int, text: str, finish: str | None = None,
              logprobs: protocol.Logprobs | None = None) -> str:
        return _sse({"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()),
                     "model": model, "choices": [{"index": index, "text": text, "finish_reason": finish,
                                                  "logprobs": logprobs.model_dump() if logprobs else None}]})

    async def events() -> AsyncIterator[str]:
        work = asyncio.ensure_future(answer(served, make, request_id, refusal=refusal))
        try:
            async for index, text in _streamed(work, pieces, request):
                yield event(served.name, index, text)
            result = work.result()
        except ServeError as error:
            record(error, request_id, "/v1/completions")
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
            return
        finally:
            work.cancel()
        text = result.results[0].text if result.results else ""
        _note_answer(request, body.prompt, body.prompt, result, text)
        for index, row in enumerate(result.results):
            whole = result.fallback_reason is not None or senders is None  # not streamed: sent whole
            yield event(result.model, index, row.text if whole else "", _finish(row.finish_reason),
                        _logprobs(body, None, row.token_logprobs))
        if (body.stream_options or {}).get("include_usage"):
            yield _sse({"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()),
                        "model": result.model, "choices": [], "usage": _usage(result).model_dump()})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"X-Request-Id": request_id, "Cache-Control": "no-cache"})


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
