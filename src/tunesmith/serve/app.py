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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tunesmith.events import event, setup_logging
from tunesmith.recipe import ServeConfig
from tunesmith.serve import canary, protocol, watch
from tunesmith.serve.access import require_key
from tunesmith.serve.middleware import BodyLimit, RequestIds, add_handlers
from tunesmith.serve.protocol import ANSWERED_BY
from tunesmith.serve.routes import add_routes
from tunesmith.serve.state import Served

__all__ = ["ANSWERED_BY", "create_app"]


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
    add_handlers(app)
    add_routes(app)
    watch.add_routes(app, require_key)
    return app
