"""Confidence intervals and paired tests for evaluation numbers.

    bootstrap_ci([1, 0, 1, 1])                 -> (low, high) of the mean, 95%
    paired_bootstrap([0, 1, 1], [1, 1, 1])     -> delta, (low, high), p-value (two-sided), and
                                                  significant: the CI excludes zero
    mcnemar([0, 1, 1, 0], [1, 1, 1, 1])        -> exact McNemar p-value for paired 0/1 scores
    cohen_kappa([(True, True), (False, True)])  -> agreement of two yes/no raters beyond chance
    kappa_ci(pairs)                            -> its bootstrap CI

The bootstrap resamples examples with replacement (seeded, so reports are reproducible);
`statistic` may be any function of the resampled indices, e.g. corpus BLEU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb

import numpy as np

RESAMPLES = 1000
SEED = 0


def bootstrap_ci(values: Sequence[float] | None = None, statistic: Callable | None = None,
                 n: int | None = None, level: float = 0.95, resamples: int = RESAMPLES
                 ) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`, or of `statistic(indices)` over n items."""
    if statistic is None:
        array = np.asarray(values, dtype=float)
        n = len(array)
        if n == 0:
            return (float("nan"), float("nan"))
        draws = np.random.default_rng(SEED).integers(0, n, size=(resamples, n))
        means = array[draws].mean(axis=1)
    else:
        draws = np.random.default_rng(SEED).integers(0, n, size=(resamples, n))
        means = np.array([statistic(row) for row in draws])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_bootstrap(base: Sequence[float], tuned: Sequence[float], level: float = 0.95,
                     resamples: int = RESAMPLES) -> dict[str, float]:
    """Mean difference tuned - base over the same examples, its CI, and a two-sided p-value
    (share of resampled deltas on the other side of zero, doubled)."""
    a, b = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    diff = b - a
    draws = np.random.default_rng(SEED).integers(0, len(diff), size=(resamples, len(diff)))
    deltas = diff[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    observed = float(diff.mean())
    if observed == 0:
        p = 1.0
    else:
        p = min(1.0, 2 * float(np.mean(deltas <= 0) if observed > 0 else np.mean(deltas >= 0)))
    low, high = float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail))
    return {"delta": observed, "ci_low": low, "ci_high": high, "p_value": p,
            "significant": low > 0 or high < 0}


def group_gap(scores: dict[str, Sequence[float]], rows: Sequence[int] | None = None) -> float:
    """Largest minus smallest mean score over groups (each group scored on the same prompts),
    over `rows` of those prompts (all by default)."""
    means = [np.asarray(v, dtype=float)[rows if rows is not None else slice(None)].mean()
             for v in scores.values()]
    return float(max(means) - min(means))


def gap_ci(scores: dict[str, Sequence[float]], level: float = 0.95) -> tuple[float, float]:
    """Bootstrap CI of group_gap, resampling prompts (every group's copy of a prompt together)."""
    n = len(next(iter(scores.values())))
    return bootstrap_ci(statistic=lambda rows: group_gap(scores, rows), n=n, level=level)


def paired_gap(before: dict[str, Sequence[float]], after: dict[str, Sequence[float]],
               level: float = 0.95, resamples: int = RESAMPLES) -> dict[str, float]:
    """gap(after) - gap(before) on the same prompts and groups, its CI and two-sided p-value:
    both runs resampled with the same prompts each time."""
    n = len(next(iter(before.values())))
    draws = np.random.default_rng(SEED).integers(0, n, size=(resamples, n))
    deltas = np.array([group_gap(after, rows) - group_gap(before, rows) for rows in draws])
    observed = group_gap(after) - group_gap(before)
    tail = (1 - level) / 2 * 100
    low, high = float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail))
    other_side = np.mean(deltas >= 0) if observed < 0 else np.mean(deltas <= 0)
    p = 1.0 if observed == 0 else min(1.0, 2 * float(other_side))
    return {"delta": observed, "ci_low": low, "ci_high": high, "p_value": p,
            "significant": low > 0 or high < 0}


def mcnemar(base: Sequence[float], tuned: Sequence[float]) -> dict[str, float]:
    """Exact McNemar test on paired right/wrong scores: only discordant pairs count."""
    base_only = sum(1 for a, b in zip(base, tuned, strict=True) if a >= 0.5 > b)
    tuned_only = sum(1 for a, b in zip(base, tuned, strict=True) if b >= 0.5 > a)
    discordant = base_only + tuned_only
    if discordant == 0:
        return {"base_only_right": 0, "tuned_only_right": 0, "p_value": 1.0}
    smaller = min(base_only, tuned_only)
    p = sum(comb(discordant, k) for k in range(smaller + 1)) / 2 ** discordant
    return {"base_only_right": base_only, "tuned_only_right": tuned_only, "p_value": min(1.0, 2 * p)}


def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion: sound at small counts and at 0% or 100%, where the
    normal approximation collapses to a point (online accuracy from a handful of ratings)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * ((p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Agreement of two yes/no raters beyond chance; None when chance agreement is total."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = first * second + (1 - first) * (1 - second)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def kappa_ci(pairs: Sequence[tuple[bool, bool]], level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of Cohen's kappa over the labelled items (resamples where kappa is
    undefined, all one class, are left out)."""
    if len(pairs) < 2:
        return None
    draws = np.random.default_rng(SEED).integers(0, len(pairs), size=(RESAMPLES, len(pairs)))
    kappas = [k for row in draws if (k := cohen_kappa([pairs[i] for i in row])) is not None]
    if not kappas:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(kappas, tail)), float(np.percentile(kappas, 100 - tail))
