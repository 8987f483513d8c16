"""The review page's web app (`tunesmith review RUN_DIR`, see review.py): the page itself, the
items as JSON, and a POST per label. It listens on 127.0.0.1 only: the run's prompts and
answers are not for the network."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tunesmith.report.review import LABELS, items, open_store
from tunesmith.report.sources import read_run
from tunesmith.rundir import RunDir


class Label(BaseModel):
    id: str = Field(max_length=200)
    label: str
    note: str = Field("", max_length=2000)


def create_review_app(run_dir: RunDir) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    from tunesmith.render import render

    run = read_run(run_dir)
    shown = items(run)
    by_id = {item["id"]: item for item in shown}
    store = open_store(run, create=True)
    name = run.recipe.name
    app = FastAPI(title="tunesmith review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render("review.html.j2", name=name, metric=run.evaluation.metric if run.evaluation else "")

    @app.get("/api/items")
    def list_items() -> dict[str, Any]:
        labels = {i: {"label": r["label"], "note": r["comment"] or ""} for i, r in store.reviews().items()}
        return {"items": shown, "labels": labels}

    @app.post("/api/label")
    def add_label(body: Label) -> dict[str, Any]:
        if body.label not in LABELS:
            raise HTTPException(422, f"label must be one of {', '.join(LABELS)}")
        item = by_id.get(body.id)
        if item is None:
            raise HTTPException(404, f"no evaluated example {body.id!r} in this run")
        store.add_review(body.id, name, item["prompt"], item["finetuned"], body.label, body.note)
        return {"id": body.id, "label": body.label, "labelled": len(store.reviews())}

    app.state.store = store
    return app
