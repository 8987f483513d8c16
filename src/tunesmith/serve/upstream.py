"""An engine that generates on another OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp's
server, or another `tunesmith serve`), so that tunesmith's watched server stands in front of the
engine users scale on.

tunesmith still renders every prompt itself, with the run's tokenizer, chat template and system
prompt (the prompt the model was trained and evaluated on), and sends it as a raw completion
(`POST /v1/completions`): the upstream never applies a template of its own, so the answers are
the evaluated ones. Streaming passes through piece by piece; a client that goes away closes the
upstream stream. Any failure (refused connection, an error status, a broken stream, a stall
longer than serve.upstream.timeout_seconds) raises, and the server's fallback answers.

    engine = UpstreamEngine.for_recipe(recipe, model_dir, name)
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.models.chat import render_prompt
from tunesmith.models.generation import GenRequest, GenResult
from tunesmith.recipe import Recipe


class UpstreamError(RuntimeError):
    """The upstream server did not answer (the fallback takes over)."""


@dataclass
class UpstreamEngine:
    url: str
    model: str
    """The upstream's name for the fine-tuned model."""
    tokenizer: Any
    context_length: int
    base_model: str | None = None
    """Its name for the base model (fallback kind base), if it serves one."""
    api_key: str | None = None
    timeout: float = 120.0
    concurrency: int = 64
    name: str = "upstream"
    continuous: bool = True
    """The upstream batches requests itself: the batcher hands each one over at once."""
    _client: Any = field(default=None, repr=False)

    @classmethod
    def for_recipe(cls, recipe: Recipe, model_dir: Path | None, name: str) -> Any:
        """The run's tokenizer (no weights are loaded) and serve.upstream's address and names."""
        from tunesmith.models.loading import load_config, load_tokenizer, model_location

        cfg = recipe.serve.upstream
        location = str(model_dir) if model_dir is not None else model_location(recipe.model)
        tokenizer = load_tokenizer(recipe.model, location)
        config = load_config(recipe.model, model_location(recipe.model))
        context = recipe.serve.vllm.max_model_len or int(
            getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length)
        return cls(cfg.url.rstrip("/"), cfg.model or name, tokenizer, context, cfg.base_model,
                   os.environ.get(cfg.api_key_env) or None, cfg.timeout_seconds, cfg.concurrency)

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(base_url=self.url, headers=headers,
                                        timeout=httpx.Timeout(self.timeout),
                                        limits=httpx.Limits(max_connections=self.concurrency))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict]) -> str:
        return render_prompt(self.tokenizer, messages)

    def generate(self, batch: list[GenRequest], use_base: bool = False) -> list[GenResult]:
        if use_base and not self.base_model:
            raise UpstreamError("the upstream serves no base model (set serve.upstream.base_model)")
        model = self.base_model if use_base else self.model
        if len(batch) == 1:
            return [self._one(batch[0], model)]
        with ThreadPoolExecutor(min(len(batch), self.concurrency)) as pool:
            return list(pool.map(lambda r: self._one(r, model), batch))

    def _body(self, request: GenRequest, model: str, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "max_tokens": request.max_tokens,
                                "temperature": request.temperature, "top_p": request.top_p, "stream": stream}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        if request.logprobs is not None:
            body["logprobs"] = request.logprobs
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _one(self, request: GenRequest, model: str) -> GenResult:
        import httpx

        try:
            if request.on_text is None:
                response = self.client.post("/v1/completions", json=self._body(request, model, False))
                _check(response)
                return self._result(request, response.json())
            return self._stream(request, model)
        except httpx.HTTPError as error:
            raise UpstreamError(f"{self.url}: {type(error).__name__}: {error}") from None

    def _result(self, request: GenRequest, payload: dict[str, Any]) -> GenResult:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        text = choice.get("text") or ""
        return GenResult(text, _finish(choice.get("finish_reason")),
                         int(usage.get("prompt_tokens") or self.count_tokens(request.prompt)),
                         int(usage.get("completion_tokens") or self.count_tokens(text)),
                         _steps(choice.get("logprobs")) if request.logprobs is not None else None)

    def _stream(self, request: GenRequest, model: str) -> GenResult:
        """Server-sent events, each piece of text handed on as it comes; the stream is closed as
        soon as the request is cancelled (the client went away, or its deadline passed)."""
        pieces: list[str] = []
        finish, usage, steps = None, {}, []
        with self.client.stream("POST", "/v1/completions", json=self._body(request, model, True)) as response:
            _check(response)
            for line in response.iter_lines():
                if request.cancelled:
                    return GenResult("".join(pieces), "cancelled", self.count_tokens(request.prompt),
                                     self.count_tokens("".join(pieces)))
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = choice.get("text") or ""
                    if piece:
                        pieces.append(piece)
                        request.on_text(piece)
                    steps += _steps(choice.get("logprobs")) or []
                    finish = choice.get("finish_reason") or finish
        if finish is None:
            raise UpstreamError(f"{self.url}: the stream ended without a finish reason")
        text = "".join(pieces)
        return GenResult(text, _finish(finish),
                         int(usage.get("prompt_tokens") or self.count_tokens(request.prompt)),
                         int(usage.get("completion_tokens") or self.count_tokens(text)),
                         steps if request.logprobs is not None else None)

    def prompt_logprobs(self, prompt: str | list[int], top: int = 0,
                        next_token: bool = False) -> list[dict[str, Any]]:
        """The upstream's logprob of every prompt token (completions with echo), and with
        `next_token` its greedy next one."""
        import httpx

        body = {"model": self.model, "prompt": prompt, "max_tokens": 1 if next_token else 0, "echo": True,
                "logprobs": top, "temperature": 0}
        try:
            response = self.client.post("/v1/completions", json=body)
            _check(response)
        except httpx.HTTPError as error:
            raise UpstreamError(f"{self.url}: {type(error).__name__}: {error}") from None
        choice = response.json()["choices"][0]
        steps = _steps(choice.get("logprobs")) or []
        if next_token and steps:
            steps[-1]["eos"] = choice.get("finish_reason") == "stop"
        return steps


def _check(response: Any) -> None:
    if response.status_code != 200:
        response.read()
        raise UpstreamError(f"the upstream answered {response.status_code}: {response.text[:300]}")


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _steps(logprobs: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """OpenAI's completion logprobs (parallel lists) as the engine's steps."""
    if not logprobs:
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs.get("tokens", []))
    return [{"token": token, "logprob": logprob, "top_logprobs": top or {}}
            for token, logprob, top in zip(logprobs.get("tokens", []), logprobs.get("token_logprobs", []),
                                           tops, strict=False)]
