"""Train/eval leakage and contamination: duplicates across splits, and n-gram overlap.

`cross_duplicates(train, other)` finds (train index, other index, Jaccard) pairs that are exact or
near duplicates (same MinHash LSH + verification as dedup). `ngram_overlap(train, other, n)`
reports how many rows of `other` share at least one word n-gram (13 by default, the usual
contamination test) with the training texts, and what share of their n-grams do. `run` is the
data stage's leakage step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tunesmith.artifacts import Leakage, LeakageSet
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


def run(splits: dict[str, list[dict]], recipe: Any, load: Callable[..., Any]
        ) -> tuple[dict[str, list[dict]], Leakage]:
    """The data stage's leakage step: copies of evaluation rows in train (and of benchmark files,
    `data.leakage.benchmark_files`) found, and flagged or dropped per `data.leakage.action`.
    `load(recipe, path, fmt=, on_invalid=)` reads a benchmark file as the recipe reads files."""
    from tunesmith.data.rows import match_text, near_params, where

    cfg = recipe.data.leakage
    section = Leakage(action=cfg.action)
    names = [n for n in splits if n != "train"]
    train, train_texts = splits["train"], [match_text(r) for r in splits["train"]]
    other_texts = {name: [match_text(r) for r in splits[name]] for name in names}
    pairs_by_set = cross_duplicates_by_set(train_texts, other_texts, near_params(recipe))
    dropped: set[int] = set()  # train rows removed for an earlier set no longer count
    for name in names:
        pairs = [(i, j, s) for i, j, s in pairs_by_set[name] if i not in dropped]
        leaked_train = sorted({i for i, _, _ in pairs})
        leaked_other = sorted({j for _, j, _ in pairs})
        entry: dict[str, Any] = {
            "duplicates_of_train": len(leaked_other),
            "train_rows_involved": len(leaked_train),
            "examples": [{"train": where(train[i]), name: where(splits[name][j]),
                          "jaccard": round(s, 3)} for i, j, s in pairs[:10]],
            "ngram_overlap": ngram_overlap(
                [t for i, t in enumerate(train_texts) if i not in dropped], other_texts[name], cfg.ngram),
        }
        if cfg.action == "drop_from_train" and leaked_train:
            dropped.update(leaked_train)
            entry["removed_from_train"] = len(leaked_train)
        elif cfg.action == "drop_from_eval" and leaked_other:
            drop = set(leaked_other)
            splits[name] = [r for i, r in enumerate(splits[name]) if i not in drop]
            entry["removed_from_" + name] = len(drop)
        section.sets[name] = LeakageSet.model_validate(entry)
    splits["train"] = [r for i, r in enumerate(train) if i not in dropped]
    for path in cfg.benchmark_files:
        bench = [match_text(r) for r in load(recipe, path, fmt="auto", on_invalid="skip",
                                                 given_as="data.leakage.benchmark_files").records]
        train_texts = [match_text(r) for r in splits["train"]]
        pairs = cross_duplicates(train_texts, bench, near_params(recipe))
        contaminated = {i for i, _, _ in pairs}
        if cfg.action != "flag":
            splits["train"] = [r for i, r in enumerate(splits["train"]) if i not in contaminated]
        section.sets[f"benchmark:{path}"] = LeakageSet(
            duplicates_of_train=len({j for _, j, _ in pairs}), train_rows_involved=len(contaminated),
            ngram_overlap=ngram_overlap(bench, train_texts, cfg.ngram))
    return splits, section
