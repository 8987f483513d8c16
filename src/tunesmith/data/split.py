"""The data stage's split step: validation and test shares held out of train (when not given as
files) with a seeded split stratified by `data.balance.by`; then data.train_fraction of the rest."""

from __future__ import annotations

from typing import Any

from tunesmith.artifacts import Split
from tunesmith.data.balance import stratified_split
from tunesmith.errors import DataError
from tunesmith.recipe import Recipe


def run(train: list[dict[str, Any]], recipe: Recipe, strata: str) -> tuple[dict[str, list[dict]], Split]:
    """train, and val / test held out of it by their fractions (of the whole train file)."""
    cfg = recipe.data
    splits: dict[str, list[dict]] = {}
    total = len(train)
    for name, given, fraction, offset in (("val", cfg.val, cfg.val_fraction, 0),
                                          ("test", cfg.test, cfg.test_fraction, 1)):
        if given or fraction <= 0 or not train:
            continue
        share = fraction * total / max(len(train), 1)  # fractions are of the whole train file
        kept, held = stratified_split(train, min(share, 0.9), strata, cfg.seed + offset)
        if not held or not kept:
            raise DataError(f"too few training rows ({len(train)}) to hold out {fraction:.0%} for "
                            f"{name}; add data, or give data.{name} as a file.")
        splits[name] = [train[i] for i in held]
        train = [train[i] for i in kept]
    splits["train"] = nested_share(train, cfg.train_fraction, cfg.seed)
    return splits, Split(stratified_by=strata, seed=cfg.seed, train_fraction=cfg.train_fraction,
                         train_rows_before_fraction=len(train))


def nested_share(rows: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """The first `fraction` of one seeded shuffle of `rows`, in their original order: the share
    for 1/8 is inside the share for 1/4, and so on (a learning curve's nested subsets)."""
    if fraction >= 1.0 or not rows:
        return rows
    import numpy as np

    order = np.random.default_rng(seed + 2).permutation(len(rows))
    kept = sorted(order[: max(1, round(fraction * len(rows)))].tolist())
    return [rows[i] for i in kept]
