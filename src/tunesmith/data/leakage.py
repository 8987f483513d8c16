"""Train/eval leakage and contamination: duplicates across splits, and n-gram overlap.

`cross_duplicates(train, other)` finds (train index, other index, Jaccard) pairs that are exact or
near duplicates (same MinHash LSH + verification as dedup). `ngram_overlap(train, other, n)`
reports how many rows of `other` share at least one word n-gram (13 by default, the usual
contamination test) with the training texts, and what share of their n-grams do.
"""

from __future__ import annotations

import re
from typing import Any

from tunesmith.data.dedup import NearDupParams, similar_pairs

_WORD = re.compile(r"\w+", re.UNICODE)


def cross_duplicates(train: list[str], other: list[str], params: NearDupParams
                     ) -> list[tuple[int, int, float]]:
    """Pairs (train index, other index, similarity) at or above params.threshold."""
    return cross_duplicates_by_set(train, {"other": other}, params)["other"]


def cross_duplicates_by_set(train: list[str], others: dict[str, list[str]], params: NearDupParams
                            ) -> dict[str, list[tuple[int, int, float]]]:
    """`cross_duplicates` for several sets in one pass, so train is shingled once."""
    texts, starts = list(train), {}
    for name, rows in others.items():
        starts[name] = len(texts)
        texts += rows
    found: dict[str, list[tuple[int, int, float]]] = {name: [] for name in others}
    ordered = sorted(starts.items(), key=lambda item: item[1])
    for i, j, similarity in similar_pairs(texts, params):
        if i >= len(train) or j < len(train):
            continue  # within train, or between two eval sets
        name, start = next((n, s) for n, s in reversed(ordered) if j >= s)
        found[name].append((i, j - start, similarity))
    return found


def _ngrams(text: str, n: int) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def ngram_overlap(train: list[str], other: list[str], n: int) -> dict[str, Any]:
    seen: set[int] = set()
    for text in train:
        seen |= _ngrams(text, n)
    rows_with_overlap, shared, total = [], 0, 0
    for index, text in enumerate(other):
        grams = _ngrams(text, n)
        hits = len(grams & seen)
        shared += hits
        total += len(grams)
        if hits:
            rows_with_overlap.append(index)
    return {
        "n": n,
        "rows": len(other),
        "rows_with_overlap": len(rows_with_overlap),
        "row_share": len(rows_with_overlap) / len(other) if other else 0.0,
        "ngram_share": shared / total if total else 0.0,
        "first_rows": rows_with_overlap[:10],
    }
