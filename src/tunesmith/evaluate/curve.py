"""What more data would buy: a saturating power law fitted to score vs training examples.

    score(n) = ceiling - scale * (n / N)^(-exponent)        N: the full training split

`forecast(points, metric)` fits the law to the mean score of each share (over seeds), predicts
the score at 2x and 10x the data, and gives each prediction a 95% interval by bootstrap: the test
examples are resampled (the same draw for every point, as they are the same examples), each
point's score recomputed and the law refitted. A curve whose 10x forecast adds under
FLAT_GAIN is called flattened: more of the same data would not move the score.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np

from tunesmith.artifacts import CurveFit, CurveForecast, CurvePoint, CurveSummary
from tunesmith.evaluate.stats import RESAMPLES, SEED

MULTIPLES = (2.0, 10.0)
FLAT_GAIN = 0.01
"""A forecast gain at 10x below this (1 point of a 0-1 metric) is a flattened curve."""


def law(x: np.ndarray, ceiling: float, scale: float, exponent: float) -> np.ndarray:
    return ceiling - scale * np.power(x, -exponent)


def fit(sizes: np.ndarray, values: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares fit of the law (x = n / N); None when it does not converge. The ceiling is
    at most 1 (a rate), the scale non-negative (more data does not hurt), the exponent in (0, 3]."""
    from scipy.optimize import curve_fit

    x = sizes / sizes.max()
    start = [min(1.0, float(values.max()) + 0.05), max(float(values.max() - values.min()), 0.01), 0.5]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(law, x, values, p0=start, bounds=([-1.0, 0.0, 1e-3], [1.0, 10.0, 3.0]),
                                  maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    return float(params[0]), float(params[1]), float(params[2])


def _means(points: list[CurvePoint], draw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(training examples, mean score over seeds) per share; with `draw`, on those test indices."""
    by_size: dict[int, list[float]] = defaultdict(list)
    for point in points:
        scores = np.asarray(point.scores, dtype=float)
        chosen = scores[draw] if draw is not None else scores
        by_size[point.train_examples].append(float(chosen.mean()))
    sizes = sorted(by_size)
    return np.asarray(sizes, dtype=float), np.asarray([np.mean(by_size[s]) for s in sizes])


def forecast(points: list[CurvePoint], metric: str, set_name: str = "test") -> CurveSummary:
    examples = len(points[0].scores) if points else 0
    summary = CurveSummary(metric=metric, set=set_name, examples=examples, points=points)
    sizes, values = _means(points)
    if len(sizes) < 3:
        summary.verdict = "Fewer than 3 training sizes: no curve to fit (give more fractions)."
        return summary
    params = fit(sizes, values)
    if params is None:
        summary.verdict = "The saturating power law did not fit these points; read the points as they are."
        return summary
    summary.fit = CurveFit(ceiling=params[0], scale=params[1], exponent=params[2])
    rng = np.random.default_rng(SEED)
    draws = [rng.integers(0, examples, size=examples) for _ in range(RESAMPLES // 5)]
    refits = [fit(*_means(points, draw)) for draw in draws]
    refits = [p for p in refits if p is not None]
    full, observed = sizes.max(), float(values[-1])
    for multiple in MULTIPLES:
        value = float(law(np.asarray(multiple), *params))
        spread = [float(law(np.asarray(multiple), *p)) for p in refits] or [value]
        summary.forecasts.append(CurveForecast(
            multiple=multiple, train_examples=int(round(multiple * full)), value=value,
            ci_low=float(np.percentile(spread, 2.5)), ci_high=float(np.percentile(spread, 97.5)),
            gain=value - observed))
    ten = summary.forecasts[-1]
    summary.flattened = ten.gain < FLAT_GAIN
    two = summary.forecasts[0]
    if summary.flattened:
        summary.verdict = (f"The curve has flattened: 10x the data ({ten.train_examples} examples) would "
                           f"likely add {100 * ten.gain:+.1f} points of {metric} (under "
                           f"{100 * FLAT_GAIN:.0f}); better data, not more of it, would move the score.")
    else:
        summary.verdict = (f"2x the data ({two.train_examples} examples) would likely give {_pct(two)} "
                           f"({100 * two.gain:+.1f} points); 10x ({ten.train_examples}) {_pct(ten)} "
                           f"({100 * ten.gain:+.1f} points). The law's ceiling: {100 * params[0]:.1f}%.")
    return summary


def _pct(found: CurveForecast) -> str:
    return f"{100 * found.value:.1f}% [{100 * found.ci_low:.1f}, {100 * found.ci_high:.1f}]"
