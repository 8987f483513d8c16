"""Drift: a window of live requests against the training data's reference, feature by feature,
with named tests. The window's drift score is the share of tests that reject.

| feature | test | drift when |
|---|---|---|
| prompt length (tokens) | two-sample Kolmogorov-Smirnov | p < monitor.drift_p_value |
| prompt length (tokens) | PSI on the reference's quintiles | PSI > monitor.psi_threshold |
| vocabulary | out-of-vocabulary rate vs the reference's | ratio > monitor.oov_ratio |
| answer labels | chi-square goodness of fit to the reference's shares | p < monitor.drift_p_value |
| prompt embeddings (MiniLM) | MMD, RBF kernel, permutation p-value | p < monitor.drift_p_value |
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tunesmith.artifacts import DriftReference
from tunesmith.monitor.reference import oov_rate
from tunesmith.recipe import MonitorConfig

PSI_FLOOR = 1e-4
"""Share given to an empty bin, so that PSI stays finite."""
PERMUTATIONS = 200
REFERENCE_FOR_MMD = 200
"""Reference embeddings an MMD test draws (the kernel matrix stays small)."""


@dataclass
class DriftTest:
    feature: str
    test: str
    statistic: float
    threshold: float
    drifted: bool
    p_value: float | None = None


@dataclass
class Window:
    """What drift is judged on: the prompts of a window and what the model answered."""
    prompts: list[str]
    lengths: list[int]
    labels: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None


@dataclass
class DriftResult:
    tests: list[DriftTest]

    @property
    def score(self) -> float:
        return sum(t.drifted for t in self.tests) / len(self.tests) if self.tests else 0.0

    def as_dict(self) -> dict:
        return {"score": self.score, "tests": [vars(t) for t in self.tests]}


def psi(reference: list[float], window: list[float], bins: int = 5) -> float:
    """Population stability index over the reference's quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(edges) + 1)
    return _psi(expected / expected.sum(), actual / max(actual.sum(), 1))


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def label_test(reference: dict[str, int], labels: list[str], alpha: float) -> DriftTest:
    """Chi-square goodness of fit of the window's labels to the reference's shares; a label the
    reference never had falls in one extra cell with a tiny expected share."""
    from scipy.stats import chisquare

    names = sorted(reference)
    counts = Counter(label if label in reference else "<new>" for label in labels)
    total = sum(reference.values())
    shares = np.array([reference[n] / total for n in names] + [PSI_FLOOR])
    shares = shares / shares.sum()
    observed = np.array([counts.get(n, 0) for n in names] + [counts.get("<new>", 0)], dtype=float)
    statistic, p_value = chisquare(observed, shares * observed.sum())
    return DriftTest("answer labels", "chi-square", float(statistic), alpha, bool(p_value < alpha),
                     float(p_value))


def mmd_test(reference: np.ndarray, window: np.ndarray, alpha: float, seed: int = 0) -> DriftTest:
    """Squared MMD with an RBF kernel (bandwidth: the median pairwise distance), p-value from
    PERMUTATIONS random relabellings of the pooled sample."""
    rng = np.random.default_rng(seed)
    if len(reference) > REFERENCE_FOR_MMD:
        reference = reference[rng.choice(len(reference), REFERENCE_FOR_MMD, replace=False)]
    pooled = np.concatenate([reference, window]).astype(np.float64)
    squared = np.sum(pooled ** 2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0)
    bandwidth = np.median(distances[np.triu_indices(len(pooled), 1)]) or 1.0
    kernel = np.exp(-distances / bandwidth)
    n = len(reference)

    def mmd(order: np.ndarray) -> float:
        k = kernel[np.ix_(order, order)]
        return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())

    observed = mmd(np.arange(len(pooled)))
    null = [mmd(rng.permutation(len(pooled))) for _ in range(PERMUTATIONS)]
    p_value = (1 + sum(v >= observed for v in null)) / (1 + PERMUTATIONS)
    return DriftTest("prompt embeddings", "MMD", observed, alpha, bool(p_value < alpha), float(p_value))


def compare(reference: DriftReference, embeddings: np.ndarray | None, window: Window,
            cfg: MonitorConfig) -> DriftResult:
    """Every test the reference and the window allow."""
    from scipy.stats import ks_2samp

    alpha, tests = cfg.drift_p_value, []
    if window.lengths and reference.lengths:
        ks = ks_2samp(reference.lengths, window.lengths)
        tests.append(DriftTest("prompt length", "KS", float(ks.statistic), alpha, bool(ks.pvalue < alpha),
                               float(ks.pvalue)))
        value = psi(reference.lengths, window.lengths)
        tests.append(DriftTest("prompt length", "PSI", value, cfg.psi_threshold, value > cfg.psi_threshold))
    if window.prompts and reference.vocabulary:
        rate = oov_rate(window.prompts, set(reference.vocabulary))
        ratio = rate / max(reference.oov_rate, 0.01)  # a 0% reference rate would make any word drift
        tests.append(DriftTest("vocabulary", "OOV rate ratio", ratio, cfg.oov_ratio, ratio > cfg.oov_ratio))
    if window.labels and reference.labels:
        tests.append(label_test(reference.labels, window.labels, alpha))
    if window.embeddings is not None and embeddings is not None and len(window.embeddings) >= 5:
        tests.append(mmd_test(embeddings, window.embeddings, alpha))
    return DriftResult(tests)
