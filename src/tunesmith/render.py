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
import re
from collections.abc import Callable
from typing import Any

from tunesmith import formatting

FALLBACK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans SC",
                  "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Noto Sans Arabic",
                  "Noto Sans Devanagari", "Noto Sans Thai", "Noto Sans Hebrew")
"""Fonts tried, in order, for characters DejaVu Sans lacks (matplotlib >= 3.6 falls back glyph by
glyph); those installed are used. Debian: `apt install fonts-noto-cjk` for Chinese, Japanese, Korean."""
_MISSING_GLYPH = r"Glyph .* missing from font"


@functools.cache
def _font_families() -> list[str]:
    from matplotlib import font_manager

    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed)]


@functools.cache
def _note_missing_glyphs() -> None:
    from tunesmith.console import note

    note("a figure holds characters that no installed font has (drawn as boxes); install a font that "
         "has them, e.g. `apt install fonts-noto-cjk` for Chinese, Japanese and Korean.")


def figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (7, 3)) -> str:
    """Draw on a fresh matplotlib axis; return the PNG as base64 text. Text in any script is drawn
    with the first installed font that has its glyphs; when none has them, one note says so (not
    a warning per glyph)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.family": _font_families()}), warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=_MISSING_GLYPH)
        figure, axis = plt.subplots(figsize=size)
        draw(axis)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        plt.close(figure)
    for warning in caught:
        if re.search(_MISSING_GLYPH, str(warning.message)):
            _note_missing_glyphs()
        else:  # anything else is the caller's to see
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
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
