"""The OpenAI-compatible routes, and chat completions (whole or streamed, with reasoning_content
apart). Raw completions are in completions.py; what both share (the cache, the monitor's notes,
the streamed pieces) in replies.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tunesmith.evaluate.metrics import parse_json_object
from tunesmith.models.chat import with_system
from tunesmith.models.generation import Engine, GenRequest
from tunesmith.serve import protocol, replies
from tunesmith.serve.access import GUARDED, note, out_of_scope
from tunesmith.serve.answer import Answer, answer, output_check
from tunesmith.serve.completions import completion
from tunesmith.serve.errors import ServeError, record
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
        return await completion(request.app.state.served, body, request)


def _messages(served: Served, body: protocol.ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    return with_system(messages, served.recipe.data.system_prompt)


async def _chat(served: Served, body: protocol.ChatCompletionRequest, request: Request):
    key, hit = replies.cached(served, "chat", body)  # a repeat was checked the first time: answer it at once
    if hit is not None:
        note(request, cached=True, prompt=[m.model_dump(mode="json") for m in body.messages],
             user_text=_last_user(body), response=hit[0]["choices"][0]["message"]["content"])
        return replies.answered(hit[0], hit[1], request, cached=True)
    messages = _messages(served, body)
    prompt = served.engine.render(messages)
    max_tokens = replies.max_tokens_for(served, body, served.engine.count_tokens(prompt))
    render = _renderer(served, messages, prompt)
    refusal = await out_of_scope(served, request, _last_user(body))
    if body.stream:
        return _stream(served, body, render, max_tokens, request, messages, refusal, opens_thinking(prompt))
    json_object = body.response_format is not None and body.response_format.type == "json_object"

    def make(engine: Engine) -> list[GenRequest]:
        return replies.rows(render(engine), body, max_tokens)

    work = answer(served, make, request.state.request_id, output_check(served, json_object), refusal)
    result = await replies.until_disconnect(request, work)
    payload = _chat_payload(result, request.state.request_id, json_object, opens_thinking(prompt))
    text = payload["choices"][0]["message"]["content"]
    replies.note_answer(request, messages, _last_user(body), result, text)
    if key is not None and result.fallback_reason is None:
        served.cache.put(key, (payload, result.model))
    return replies.answered(payload, result.model, request)


def _chat_payload(result: Answer, request_id: str, json_object: bool, opened: bool = False) -> dict[str, Any]:
    choices = []
    for index, row in enumerate(result.results):
        reasoning, text = split_answer(row.text.strip(), opened and result.fallback_reason is None)
        if json_object:  # the object itself, without prose around it
            parsed = parse_json_object(text)
            text = json.dumps(parsed, ensure_ascii=False) if parsed is not None else text
        message = protocol.AssistantMessage(content=text, reasoning_content=reasoning)
        choices.append(protocol.ChatChoice(index=index, message=message,
                                           finish_reason=replies.finish(row.finish_reason)))
    return protocol.ChatCompletion(id=f"chatcmpl-{request_id}", model=result.model, choices=choices,
                                   usage=replies.usage(result)).model_dump(mode="json")


def _last_user(body: protocol.ChatCompletionRequest) -> str:
    return next((m.text() for m in reversed(body.messages) if m.role == "user"), "")


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
    pieces, senders = replies.senders(served, body.n)

    def make(engine: Engine) -> list[GenRequest]:
        return replies.rows(render(engine), body, max_tokens, on_text=senders)

    async def events() -> AsyncIterator[str]:
        work = asyncio.ensure_future(answer(served, make, request_id, refusal=refusal))
        completion_id, name = f"chatcmpl-{request_id}", served.name
        splitters = [ReasoningStream(opened) for _ in range(body.n)]
        for index in range(body.n):
            opening = {"role": "assistant", "content": ""}
            yield replies.sse(protocol.chunk(completion_id, name, index, opening))
        try:
            async for index, text in replies.streamed(work, pieces, request):
                for field, delta in splitters[index].feed(text):
                    yield replies.sse(protocol.chunk(completion_id, name, index, {field: delta}))
            result = work.result()
        except ServeError as error:
            record(error, request_id, "/v1/chat/completions")
            yield replies.sse(error.body())
            yield "data: [DONE]\n\n"
            return
        finally:
            work.cancel()
        text = result.results[0].text.strip() if result.results else ""
        replies.note_answer(request, messages, user_text, result, text)
        for index, row in enumerate(result.results):
            if result.fallback_reason is not None or senders is None:  # not streamed: send it whole
                splitters[index] = ReasoningStream(opened and result.fallback_reason is None)
                pending = splitters[index].feed(row.text) + splitters[index].finish()
            else:
                pending = splitters[index].finish()  # what was held back as a possible tag
            for field, delta in pending:
                yield replies.sse(protocol.chunk(completion_id, result.model, index, {field: delta}))
            ending = replies.finish(row.finish_reason)
            yield replies.sse(protocol.chunk(completion_id, result.model, index, {}, ending))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"X-Request-Id": request_id, "Cache-Control": "no-cache"})
