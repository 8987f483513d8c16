"""Figures as inline PNG (base64) and plain HTML tables, for self-contained report pages."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any


def figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (7, 3)) -> str:
    """Draw on a fresh matplotlib axis; return the PNG as base64 text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=size)
    draw(axis)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def img(alt: str, png_base64: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64}">'


def html_table(rows: list[list[Any]], header: list[str], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><tr>{head}</tr>{body}</table>"


STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
         "padding:2px 6px;font-size:13px;text-align:left;vertical-align:top}"
         ".warn{color:#a60}.key{font-size:20px}")


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
