"""Rendering for people: Jinja2 templates (`tunesmith/templates/`) for the HTML reports and the
model card, and matplotlib figures inlined as PNG, so every page is self-contained (no network).

    render("run_report.html.j2", run=..., figures=...)    # HTML: autoescaped
    render("model_card.md.j2", ...)                        # Markdown: not escaped

Templates get the `tunesmith.formatting` functions as filters (`{{ x | pct(ci) }}`,
`{{ paired | delta }}`), so a number reads the same on every page and in the terminal.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from typing import Any

from tunesmith import formatting


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


@functools.cache
def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("tunesmith", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False, default=False),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters.update(pct=formatting.pct, delta=formatting.delta, points=formatting.points,
                               number=formatting.number)
    return environment


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)
