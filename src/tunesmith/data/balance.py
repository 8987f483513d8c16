"""Distributions, balancing and the stratified split.

A record's *stratum* is what balancing and stratification look at (`data.balance.by`):
    label          the label of classification records
    answer         the final assistant answer of chat records (short answers: a category)
    meta.<key>     any meta field, e.g. meta.group or meta.source
`auto` takes `label` for classification data and `answer` for chat data whose answers take
few distinct values (at most 50), else no strata.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Any

from tunesmith.artifacts import Balance
from tunesmith.data.filters import answers

AUTO_MAX_ANSWER_VALUES = 50


def stratum_of(record: dict[str, Any], by: str) -> str:
    if by == "label":
        return str(record.get("label", ""))
    if by == "answer":
        found = answers(record)
        return found[-1] if found else ""
    if by.startswith("meta."):
        return str(record["meta"].get(by[5:], ""))
    return ""


def resolve_strata(records: list[dict[str, Any]], by: str) -> str:
    """`auto` -> label / answer / none, as the module docstring says."""
    if by != "auto":
        return by
    if records and "label" in records[0]:
        return "label"
    if records and "messages" in records[0]:
        values = {stratum_of(r, "answer") for r in records}
        if 1 < len(values) <= AUTO_MAX_ANSWER_VALUES:
            return "answer"
    return "none"


def distribution(records: list[dict[str, Any]], by: str) -> dict[str, int]:
    counts = Counter(stratum_of(r, by) for r in records)
    return dict(counts.most_common())


def entropy_bits(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values() if c) if total else 0.0


def stratified_split(records: list[dict], fraction: float, by: str, seed: int,
                     groups: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Indices (kept, held_out): about `fraction` of every stratum held out, seeded.

    `groups` (one id per record, e.g. a near-duplicate cluster) keeps a group on one side,
    so no held-out example has a near copy in training."""
    if fraction <= 0:
        return list(range(len(records))), []
    groups = groups if groups is not None else list(range(len(records)))
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    strata: dict[str, list[int]] = defaultdict(list)
    for group, indices in sorted(members.items()):
        strata[stratum_of(records[indices[0]], by) if by != "none" else ""].append(group)
    rng = random.Random(seed)
    held: set[int] = set()
    for _, stratum_groups in sorted(strata.items()):
        rng.shuffle(stratum_groups)
        target = round(sum(len(members[g]) for g in stratum_groups) * fraction)
        taken = 0
        for group in stratum_groups:
            if taken >= target:
                break
            held.update(members[group])
            taken += len(members[group])
    if not held and round(len(records) * fraction) >= 1 and len(members) > 1:
        # every stratum too small to give a row (e.g. unique answers): hold out across strata
        pool = sorted(members)
        rng.shuffle(pool)
        for group in pool[:-1]:
            if len(held) >= round(len(records) * fraction):
                break
            held.update(members[group])
    kept = [i for i in range(len(records)) if i not in held]
    return kept, sorted(held)


def rebalance(records: list[dict], strategy: str, by: str, cap: int | None, seed: int
              ) -> tuple[list[dict], dict[str, float]]:
    """Apply `strategy` to training records; returns (records, class weights or {}).

    cap: at most `cap` records per stratum (the rest dropped, seeded);
    oversample: repeat records of smaller strata until each matches the largest;
    class_weights: records unchanged, weights total/(strata x count) reported per stratum.
    """
    if strategy == "none" or by == "none":
        return records, {}
    rng = random.Random(seed)
    strata: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        strata[stratum_of(record, by)].append(record)
    if strategy == "cap":
        out = []
        for _, items in sorted(strata.items()):
            out += rng.sample(items, cap) if cap is not None and len(items) > cap else items
        return out, {}
    if strategy == "oversample":
        largest = max(len(items) for items in strata.values())
        out = list(records)
        for _, items in sorted(strata.items()):
            extra = [dict(rng.choice(items)) for _ in range(largest - len(items))]
            for record in extra:
                record["meta"] = {**record["meta"], "oversampled": True}
            out += extra
        return out, {}
    total = len(records)
    return records, {k: total / (len(strata) * len(v)) for k, v in sorted(strata.items())}


def run(splits: dict[str, list[dict]], recipe: Any, strata: str) -> tuple[list[dict], Balance]:
    """The data stage's balance step: the training split rebalanced (`data.balance.strategy`),
    and every split's distribution over the strata."""
    cfg = recipe.data
    train, weights = rebalance(splits["train"], cfg.balance.strategy, strata, cfg.balance.cap, cfg.seed)
    shown = {**splits, "train": train}
    return train, Balance(strategy=cfg.balance.strategy, by=strata, class_weights=weights,
                          distribution={n: distribution(rows, strata) for n, rows in shown.items()}
                          if strata != "none" else {})
