"""How numbers read, everywhere (terminal tables, model card, HTML reports): one module, one
precision, so the same result never reads two ways.

    pct(0.942, (0.894, 0.983))                  -> "94.2% [89.4, 98.3]"
    delta(paired)                               -> "-40.0 pts [-60.0, -20.0] *"   (* = significant)
    points(0.0123)                              -> "1.2 pts"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DIGITS = 1
"""Decimals of a percentage or a point difference."""


def pct(value: float | None, ci: Sequence[float] | None = None) -> str:
    """A rate as a percentage, with its CI in brackets when given; '-' when there is no value."""
    if value is None:
        return "-"
    text = f"{100 * value:.{DIGITS}f}%"
    if ci is not None:
        text += f" [{100 * ci[0]:.{DIGITS}f}, {100 * ci[1]:.{DIGITS}f}]"
    return text


def interval(value: Any) -> str:
    """An `Interval` (value and bootstrap CI) as a percentage; '-' for None."""
    return "-" if value is None else pct(value.value, (value.ci_low, value.ci_high))


def points(value: float, sign: bool = False) -> str:
    """A difference of two rates, in percentage points."""
    return f"{100 * value:{'+' if sign else ''}.{DIGITS}f} pts"


def gap_text(result: Any) -> str:
    """A bias probe's largest gap with its CI: '12.5 pts [4.2, 20.8]'."""
    if result.gap_ci is None:
        return points(result.gap)
    return f"{points(result.gap)} [{100 * result.gap_ci[0]:.{DIGITS}f}, {100 * result.gap_ci[1]:.{DIGITS}f}]"


def delta(paired: Any) -> str:
    """A paired difference (anything with delta, ci_low, ci_high, significant): '+1.2 pts [-0.5,
    +3.0]', starred when its CI excludes zero; '-' when there is none."""
    if paired is None:
        return "-"
    return (f"{points(paired.delta, sign=True)} [{100 * paired.ci_low:+.{DIGITS}f}, "
            f"{100 * paired.ci_high:+.{DIGITS}f}]" + (" *" if paired.significant else ""))


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
