"""Raw completions (/v1/completions): whole, streamed, or scored (`echo` with `logprobs`: what
log-likelihood evaluators such as lm-evaluation-harness send). A prompt is text or token ids,
one or a batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunesmith.models.generation import Engine, GenRequest, GenResult
from tunesmith.serve import protocol, replies
from tunesmith.serve.access import note, out_of_scope
from tunesmith.serve.answer import Answer, answer
from tunesmith.serve.errors import ServeError, record
from tunesmith.serve.state import Served


@dataclass
class _Prompt:
    text: str
    source: str | list[int]
    """What the engine scores: the text, or the token ids exactly as sent."""
    tokens: int


def _prompts(served: Served, body: protocol.CompletionRequest) -> list[_Prompt]:
    """The request's prompts; token ids are decoded for what needs text (the scope guard, the
    monitor, generation) and scored as sent."""
    out = []
    for prompt in body.prompts():
        if isinstance(prompt, str):
            out.append(_Prompt(prompt, prompt, served.engine.count_tokens(prompt)))
            continue
        tokenizer = getattr(served.engine, "tokenizer", None)
        if tokenizer is None:
            raise ServeError(400, f"The {served.engine.name} engine takes text prompts; send the prompt as "
                                  "text.", "input", "unsupported_parameter", "prompt")
        if max(prompt) >= len(tokenizer):
            raise ServeError(400, f"Token id {max(prompt)} is outside this model's vocabulary "
                                  f"({len(tokenizer)} tokens); send ids from its own tokenizer.",
                             "input", "invalid_value", "prompt")
        out.append(_Prompt(tokenizer.decode(prompt), prompt, len(prompt)))
    return out


def _scoring(body: protocol.CompletionRequest, max_tokens: int) -> bool:
    """What log-likelihood evaluators ask: the prompt's logprobs (echo) and at most the greedy
    next token; answered by one forward pass per prompt, without generating."""
    return (body.echo and body.logprobs is not None and max_tokens <= 1
            and (max_tokens == 0 or body.temperature == 0))


async def completion(served: Served, body: protocol.CompletionRequest, request: Request):
    prompts = _prompts(served, body)
    max_tokens = max(replies.max_tokens_for(served, body, p.tokens) for p in prompts)
    first = prompts[0].text
    if body.stream:
        if body.echo or len(prompts) > 1:
            raise ServeError(400, "A streamed completion takes one prompt and no echo; send a batch or echo "
                                  "without stream.", "input", "unsupported_parameter",
                             "echo" if body.echo else "prompt")
        refusal = await out_of_scope(served, request, first)
        return _completion_stream(served, body, first, max_tokens, request, refusal)
    key, hit = replies.cached(served, "completions", body)
    if hit is not None:
        note(request, cached=True, prompt=first, user_text=first, response=hit[0]["choices"][0]["text"])
        return replies.answered(hit[0], hit[1], request, cached=True)
    if _scoring(body, max_tokens):
        result, choices = await _scored(served, body, prompts, max_tokens == 1)
    else:
        result, choices = await _generated(served, body, prompts, max_tokens, request)
    payload = protocol.Completion(id=f"cmpl-{request.state.request_id}", model=result.model,
                                  usage=_usage(prompts, result), choices=choices).model_dump(mode="json")
    replies.note_answer(request, first, first, result, result.results[0].text if result.results else "")
    if key is not None and result.fallback_reason is None:
        served.cache.put(key, (payload, result.model))
    return replies.answered(payload, result.model, request)


async def _scored(served: Served, body: protocol.CompletionRequest, prompts: list[_Prompt],
                  next_token: bool) -> tuple[Answer, list[protocol.CompletionChoice]]:
    """Each prompt's logprobs (and greedy next token) from the served model, n copies each."""
    def score() -> list[list[dict]]:
        return [served.engine.prompt_logprobs(p.source, top=body.logprobs, next_token=next_token)
                for p in prompts]

    steps = await asyncio.to_thread(score)
    rows, choices = [], []
    for i, (prompt, scored) in enumerate(zip(prompts, steps, strict=True)):
        last = scored[-1] if next_token else None
        text = "" if last is None or last.get("eos") else last["token"]
        row = GenResult(text, "stop" if last is not None and last.get("eos") else "length", prompt.tokens,
                        int(last is not None))
        for j in range(body.n):
            rows.append(row)
            choices.append(protocol.CompletionChoice(index=i * body.n + j, text=prompt.text + text,
                                                     finish_reason=row.finish_reason,
                                                     logprobs=_logprobs(body, scored, None)))
    return Answer(rows, served.name), choices


async def _generated(served: Served, body: protocol.CompletionRequest, prompts: list[_Prompt],
                     max_tokens: int, request: Request) -> tuple[Answer, list[protocol.CompletionChoice]]:
    """n answers to each prompt, through the batcher (and the fallback, the guards, the cache)."""
    echoed = None
    if body.echo and body.logprobs is not None:
        echoed = await asyncio.to_thread(lambda: [served.engine.prompt_logprobs(p.source, top=body.logprobs)
                                                  for p in prompts])
    if max_tokens == 0:
        result = Answer([_empty(p.tokens) for p in prompts for _ in range(body.n)], served.name)
    else:
        def make(engine: Engine) -> list[GenRequest]:
            return [row for p in prompts for row in replies.rows(p.text, body, max_tokens, body.logprobs)]

        refusal = None
        for prompt in prompts:
            refusal = refusal or await out_of_scope(served, request, prompt.text)
        result = await replies.until_disconnect(request, answer(served, make, request.state.request_id,
                                                                refusal=refusal))
    choices = []
    for k, row in enumerate(result.results):
        prompt = prompts[k // body.n]
        choices.append(protocol.CompletionChoice(
            index=k, text=(prompt.text if body.echo else "") + row.text,
            finish_reason=replies.finish(row.finish_reason),
            logprobs=_logprobs(body, echoed[k // body.n] if echoed else None, row.token_logprobs)))
    return result, choices


def _usage(prompts: list[_Prompt], result: Answer) -> protocol.Usage:
    prompt = sum(p.tokens for p in prompts)
    completion = sum(r.completion_tokens for r in result.results)
    return protocol.Usage(prompt_tokens=prompt, completion_tokens=completion,
                          total_tokens=prompt + completion)


def _completion_stream(served: Served, body: protocol.CompletionRequest, prompt: str, max_tokens: int,
                       request: Request, refusal: str | None) -> StreamingResponse:
    """Server-sent events of a raw completion (what vLLM sends, and what a tunesmith server in
    front of this one forwards): each choice's text as it is made, its finish reason, the usage
    when stream_options.include_usage asks, then [DONE]."""
    request_id = request.state.request_id
    pieces, senders = replies.senders(served, body.n)

    def make(engine: Engine) -> list[GenRequest]:
        return replies.rows(prompt, body, max_tokens, body.logprobs, on_text=senders)

    def event(model: str, index: int, text: str, finish: str | None = None,
              logprobs: protocol.Logprobs | None = None) -> str:
        head = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time())}
        choice = {"index": index, "text": text, "finish_reason": finish,
                  "logprobs": logprobs.model_dump() if logprobs else None}
        return replies.sse({**head, "model": model, "choices": [choice]})

    async def events() -> AsyncIterator[str]:
        work = asyncio.ensure_future(answer(served, make, request_id, refusal=refusal))
        try:
            async for index, text in replies.streamed(work, pieces, request):
                yield event(served.name, index, text)
            result = work.result()
        except ServeError as error:
            record(error, request_id, "/v1/completions")
            yield replies.sse(error.body())
            yield "data: [DONE]\n\n"
            return
        finally:
            work.cancel()
        text = result.results[0].text if result.results else ""
        replies.note_answer(request, prompt, prompt, result, text)
        for index, row in enumerate(result.results):
            whole = result.fallback_reason is not None or senders is None  # not streamed: sent whole
            yield event(result.model, index, row.text if whole else "", replies.finish(row.finish_reason),
                        _logprobs(body, None, row.token_logprobs))
        if (body.stream_options or {}).get("include_usage"):
            head = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time())}
            counted = replies.usage(result).model_dump()
            yield replies.sse({**head, "model": result.model, "choices": [], "usage": counted})
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
