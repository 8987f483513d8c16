"""The data stage: load and validate every file of the recipe, split, and write canonical JSONL.

    tunesmith data prepare recipes/demo.yaml      # writes runs/<run>/data/
    tunesmith data inspect FILE                   # a report on one file, writes nothing

`run(recipe, run)` reads `data.train` (+ `val`, `test`, `eval_sets`), converts rows to the
canonical records of DESIGN.md, holds out validation/test shares of train with a fixed seed
(stratified by label for classification data), and writes `data/<split>.jsonl` and
`data/stats.json`. It loads no model, so a bad row fails in seconds, not after a model load.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tunesmith.data.load import LoadedFile, load_file
from tunesmith.errors import DataError
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, write_json, write_jsonl

MAX_INVALID_LISTED = 50


@dataclass
class DataResult:
    splits: dict[str, list[dict[str, Any]]]
    """train, val, optionally test, and each named eval set."""
    kind: str
    """Record kind of the training data: chat, classification or text."""
    stats: dict[str, Any]


def _load(recipe: Recipe, path: str) -> LoadedFile:
    cfg = recipe.data
    return load_file(path, cfg.format, cfg.columns, cfg.on_invalid, cfg.max_rows)


def _hold_out(records: list[dict], fraction: float, seed: int, kind: str) -> tuple[list, list]:
    """Split off `fraction` of records, stratified by label when records have labels."""
    if fraction <= 0:
        return records, []
    rng = random.Random(seed)
    strata: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        strata[record.get("label", "") if kind == "classification" else ""].append(i)
    held: set[int] = set()
    for indices in strata.values():
        rng.shuffle(indices)
        held.update(indices[: round(len(indices) * fraction)])
    if not held or len(held) == len(records):
        raise DataError(
            f"too few training rows ({len(records)}) to hold out {fraction:.0%}; "
            "add data, or give data.val / data.test files."
        )
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def _tag_domain(records: list[dict], domain: str) -> list[dict]:
    for record in records:
        record["meta"].setdefault("domain", domain)
    return records


def run(recipe: Recipe, run_dir: RunDir) -> DataResult:
    cfg = recipe.data
    if not cfg.train:
        raise DataError("data.train is empty: set it to your training file(s) in the recipe.")
    files: dict[str, LoadedFile] = {}
    train: list[dict] = []
    for path in cfg.train:
        files[path] = _load(recipe, path)
        train += files[path].records
    kinds = {f.kind for f in files.values()}
    if len(kinds) > 1:
        raise DataError(f"data.train mixes record kinds {sorted(kinds)}; train on one kind at a time.")
    kind = kinds.pop()

    splits: dict[str, list[dict]] = {}
    train, val = _hold_out(train, 0 if cfg.val else cfg.val_fraction, cfg.seed, kind)
    train, test = _hold_out(train, 0 if cfg.test else cfg.test_fraction, cfg.seed + 1, kind)
    for name, path in (("val", cfg.val), ("test", cfg.test)):
        if path:
            files[path] = _load(recipe, path)
    splits["train"] = train
    splits["val"] = files[cfg.val].records if cfg.val else val
    test_records = files[cfg.test].records if cfg.test else test
    if test_records:
        splits["test"] = _tag_domain(test_records, "in-domain")
    for name, path in cfg.eval_sets.items():
        if name in ("train", "val", "test"):
            raise DataError(f"data.eval_sets.{name}: that name is taken by a split; pick another.")
        files[path] = _load(recipe, path)
        splits[name] = _tag_domain(files[path].records, name)
    for name, path in (("val", cfg.val), ("test", cfg.test), *cfg.eval_sets.items()):
        if path and files[path].kind != kind:
            raise DataError(f"{path}: {files[path].kind} records, but train is {kind}; use one kind.")

    stats = {
        "kind": kind,
        "files": {
            path: {
                "format": f.format,
                "valid_rows": len(f.records),
                "invalid_rows": len(f.invalid),
                "invalid": [vars(i) for i in f.invalid[:MAX_INVALID_LISTED]],
            }
            for path, f in files.items()
        },
        "splits": {name: len(rows) for name, rows in splits.items()},
        "seed": cfg.seed,
    }
    for name, rows in splits.items():
        write_jsonl(run_dir.split(name), rows)
    write_json(run_dir.data / "stats.json", stats)
    run_dir.record("data", run_dir.data)
    return DataResult(splits, kind, stats)


def print_stats(stats: dict[str, Any]) -> None:
    """A short table of files, formats, valid and invalid rows, and split sizes."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data")
    for column in ("file", "format", "valid", "invalid"):
        table.add_column(column, justify="left" if column in ("file", "format") else "right")
    for path, info in stats["files"].items():
        table.add_row(path, info["format"], str(info["valid_rows"]), str(info["invalid_rows"]))
    console = Console()
    console.print(table)
    console.print("splits: " + ", ".join(f"{k} {v}" for k, v in stats["splits"].items()))


def load_splits(run_dir: RunDir) -> dict[str, list[dict[str, Any]]]:
    """The splits a previous data stage wrote (train, val, test, eval sets)."""
    from tunesmith.rundir import read_jsonl

    if not run_dir.split("train").exists():
        raise DataError(f"{run_dir.root}: no prepared data. Run `tunesmith data prepare RECIPE` first.")
    return {p.stem: read_jsonl(p) for p in sorted(run_dir.data.glob("*.jsonl"))}
