"""The OpenAI API's request and response shapes that tunesmith serves (chat completions,
completions, models, errors), as pydantic models: FastAPI validates requests with them and
publishes them in its OpenAPI schema, which the schema fuzzing test runs against."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ANSWERED_BY = "X-Tunesmith-Model"
"""The header that says who answered: the model or its fallback (routes set it, the middleware logs it)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI parameters we do not use are accepted
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    @property
    def deterministic(self) -> bool:
        """Same request, same answer: greedy, or sampled with a seed (what the cache keeps)."""
        return self.temperature == 0 or self.seed is not None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object"] = "text"


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    response_format: ResponseFormat | None = None


TokenIds = list[Annotated[int, Field(ge=0)]]
MAX_PROMPTS = 64
"""Prompts in one /v1/completions request (a batch of a log-likelihood evaluator)."""


class CompletionRequest(_Request):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    """One prompt or a batch of them, as text or token ids (OpenAI's API and vLLM take both;
    lm-evaluation-harness sends token ids). Prompt i's choices are indexed i * n + j."""
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    stream_options: dict[str, Any] | None = None
    """{"include_usage": true}: a last event carries the usage (streamed completions)."""

    @field_validator("prompt")
    @classmethod
    def _prompts_given(cls, value: Any) -> Any:
        prompts = _prompt_list(value)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("give a prompt (text or token ids); an empty one has nothing to complete")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"{len(prompts)} prompts in one request; send at most {MAX_PROMPTS}")
        return value

    def prompts(self) -> list[str | list[int]]:
        return _prompt_list(self.prompt)


def _prompt_list(value: Any) -> list[Any]:
    """A prompt, a list of texts, a list of token ids, or a list of those: as a list of prompts."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return list(value)


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: a user's verdict on one answer."""
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(..., min_length=1, max_length=128)
    """The answer's `id` (chatcmpl-..., cmpl-...) or its X-Request-Id."""
    rating: Literal[1, -1]
    correction: str | None = Field(None, max_length=20_000)
    """What the answer should have been (becomes SFT data, and DPO's chosen side)."""
    comment: str | None = Field(None, max_length=2_000)

    @property
    def request_id(self) -> str:
        for prefix in ("chatcmpl-", "cmpl-"):
            if self.response_id.startswith(prefix):
                return self.response_id[len(prefix):]
        return self.response_id


class FeedbackReceipt(BaseModel):
    id: int
    request_id: str
    rating: int
    object: Literal["feedback"] = "feedback"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None
    """The <think> block a reasoning model wrote before its answer (vLLM's and DeepSeek's field)."""


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str


class _Response(BaseModel):
    """What chat and text completions share: id, time, who answered, token counts."""
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Usage


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class Logprobs(BaseModel):
    """The legacy completions logprobs shape (what log-likelihood evaluators read)."""
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: Logprobs | None = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunesmith"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def chunk(completion_id: str, model: str, index: int, delta: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    """One server-sent event of a streamed chat completion."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]}
