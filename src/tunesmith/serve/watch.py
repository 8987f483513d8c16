"""The routes that watch a served model (the monitor of `monitor/`):

    GET  /ready              200 once the model is loaded and its queue is not full, else 503
    GET  /metrics            Prometheus text format (key required when keys are set)
    POST /v1/feedback        a rating (+1 / -1) of an answer, an optional correction and comment
    GET  /monitor/summary    windows, drift, feedback and alerts as JSON (the dashboard's data)
    GET  /dashboard          a self-contained page that refreshes itself from /monitor/summary
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tunesmith.monitor.store import UnknownRequest
from tunesmith.serve import protocol
from tunesmith.serve.errors import ServeError


def add_routes(app: FastAPI, require_key: Any) -> None:
    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        served = getattr(request.app.state, "served", None)
        if served is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        if served.batcher.depth >= served.batcher.queue_size:
            return JSONResponse({"status": "saturated", "queue": served.batcher.depth}, status_code=503)
        return JSONResponse({"status": "ready", "queue": served.batcher.depth})

    @app.get("/metrics", dependencies=[Depends(require_key)], response_class=Response)
    async def metrics(request: Request) -> Response:
        body, content_type = request.app.state.served.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/feedback", dependencies=[Depends(require_key)], response_model=protocol.FeedbackReceipt)
    async def feedback(body: protocol.FeedbackRequest, request: Request) -> protocol.FeedbackReceipt:
        served = request.app.state.served
        if served.monitor is None or served.monitor.store is None:
            raise ServeError(400, "Feedback needs the monitor (monitor.enabled: true).", "input",
                             "monitor_disabled")
        try:
            row = await asyncio.to_thread(served.monitor.store.add_feedback, body.request_id, body.rating,
                                          body.correction, body.comment)
        except UnknownRequest:
            raise ServeError(404, f"No answer with id {body.response_id!r} in the request log (it may be "
                                  "past monitor.retention_days).", "input", "unknown_response",
                             "response_id") from None
        served.metrics.feedback.labels(rating=str(body.rating)).inc()
        return protocol.FeedbackReceipt(id=row["id"], request_id=row["request_id"], rating=row["rating"])

    @app.get("/monitor/summary", dependencies=[Depends(require_key)])
    async def summary(request: Request) -> dict[str, Any]:
        served = request.app.state.served
        if served.monitor is None:
            return {"model": served.name, "monitor": "disabled"}
        return await asyncio.to_thread(served.monitor.summary, served.name)

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(request: Request) -> HTMLResponse:
        from tunesmith.render import render

        return HTMLResponse(render("dashboard.html.j2", model=request.app.state.served.name))
