"""The data stage: load, validate, clean, filter, deduplicate, split leak-free, balance, augment.

    tunesmith data prepare recipes/demo.yaml      # writes runs/<run>/data/
    tunesmith data inspect FILE                   # the same steps on one file, writes nothing

`run(recipe, run_dir)` reads `data.train` (+ `val`, `test`, `eval_sets`), converts rows to the
canonical records of DESIGN.md (cleaned and judged row by row while loading) and then takes them
through the steps, in this order, each a typed `run(records, recipe, ...) -> (records, section)`
in its own module, whose section goes into data/report.json as it is:

    privacy.run       scrub personal data (opt-in)               -> Privacy
    filters.run       drop low-quality training rows              -> Filters
    duplicates.run    exact and near duplicates out of train       -> Dedup
    split.run         validation / test held out, stratified      -> Split
    leakage.run       train copies of evaluation rows             -> Leakage
    balance.run       rebalance train                              -> Balance
    augment.run       extra training rows (opt-in)                 -> Augment
    bias.run          group x answer-class audit, mitigation       -> the bias section
    licenses          each file's license, source, hash, rows kept -> the licenses section

It writes `data/<split>.jsonl`, `data/report.json` and `data/report.html`. It loads a tokenizer
(for token lengths) but no model, so bad data fails in seconds. `analyse` is the same without
writing anything (what `data inspect` uses).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunesmith.artifacts import DataReport, FileReport, dump, save
from tunesmith.data import augment, balance, bias, duplicates, filters, leakage, licenses, privacy, split
from tunesmith.data.load import LoadedFile
from tunesmith.data.report import LengthCounter, describe, print_report_summary, write_html
from tunesmith.data.rows import load, match_text, near_params, read_options, where
from tunesmith.errors import DataError
from tunesmith.files import read_jsonl, write_jsonl
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir

__all__ = ["DataResult", "analyse", "load", "load_splits", "match_text", "near_params", "print_stats",
           "read_options", "run", "where"]
MAX_LISTED = 50


@dataclass
class DataResult:
    splits: dict[str, list[dict[str, Any]]]
    """train, val, optionally test, and each named eval set."""
    kind: str
    """Record kind of the training data: chat, classification, text or preference."""
    report: DataReport
    """What data/report.json holds."""
    files: dict[str, LoadedFile]
    """Every input file as loaded (format, records, invalid rows), by path."""
    length: LengthCounter
    """Token lengths with the recipe's tokenizer (remembered: ask again at no cost)."""

    @property
    def stats(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return dump(self.report)


def run(recipe: Recipe, run_dir: RunDir, tokenizer: Any = None) -> DataResult:
    """The data stage. `tokenizer=None` loads the recipe model's tokenizer (for token lengths)."""
    result = analyse(recipe, tokenizer)
    run_dir.data.mkdir(parents=True, exist_ok=True)
    for name, rows in result.splits.items():
        write_jsonl(run_dir.split(name), rows)
    save(result.report, run_dir.data_report)
    write_html(result.report, run_dir.data_report_html)
    return result


def analyse(recipe: Recipe, tokenizer: Any = None, objective: bool = True) -> DataResult:
    """Every step of the data stage, in memory: nothing is written. `objective=False` describes
    a file (`data inspect`): any record kind whatever train.method is, and filters may leave no row."""
    cfg = recipe.data
    inputs = _load_inputs(recipe, objective)
    report = _first_report(inputs, recipe)
    sets, report.privacy = privacy.run({"train": inputs.train, **inputs.given}, recipe)
    train = sets.pop("train")
    if cfg.filters.enabled and tokenizer is None:
        from tunesmith.models.loading import load_tokenizer

        tokenizer = load_tokenizer(recipe.model)
    length = LengthCounter(tokenizer, cfg.system_prompt, family=recipe.model.family)
    if cfg.filters.enabled:
        train, report.filters = filters.run(train, recipe, length)
    train, report.dedup = duplicates.run(train, recipe)
    if not train and objective:
        raise DataError(_nothing_left(report))
    strata = balance.resolve_strata(train, cfg.balance.by)
    splits, report.split = split.run(train, recipe, strata)
    splits.update(sets)  # the sets given as files: val, test and each eval set
    for name in [n for n in splits if n not in ("train", "val")]:
        for record in splits[name]:
            record["meta"].setdefault("domain", "in-domain" if name == "test" else name)
    splits, report.leakage = leakage.run(splits, recipe, load)
    splits["train"], report.balance = balance.run(splits, recipe, strata)
    splits["train"], report.augment = augment.run(splits["train"], recipe)
    splits["train"], report.bias = bias.run(splits["train"], recipe)
    if not splits["train"] and objective:
        raise DataError(_nothing_left(report))
    ordered = {"train": splits.pop("train"), "val": splits.pop("val", [])} | splits
    report.splits = {name: len(rows) for name, rows in ordered.items()}
    report.describe = {name: describe(rows, length) for name, rows in ordered.items() if rows}
    found = licenses.resolve(cfg, recipe.train.init_adapter)
    report.licenses = licenses.report_section(recipe, found, ordered)
    return DataResult(ordered, inputs.kind, report, inputs.files, length)


@dataclass
class _Inputs:
    files: dict[str, LoadedFile]
    train: list[dict]
    given: dict[str, list[dict]]
    """Splits given as files: val, test and each eval set."""
    kind: str


def _load_inputs(recipe: Recipe, objective: bool = True) -> _Inputs:
    """Every input file, loaded and validated row by row; one record kind throughout."""
    cfg = recipe.data
    if not cfg.train:
        raise DataError("data.train is empty: set it to your training file(s) in the recipe.")
    files: dict[str, LoadedFile] = {}
    train: list[dict] = []
    for path in cfg.train:
        files[path] = load(recipe, path, given_as="data.train")
        train += files[path].records
    kinds = {f.kind for f in files.values()}
    if len(kinds) > 1:
        raise DataError(f"data.train mixes record kinds {sorted(kinds)}; train on one kind at a time.")
    kind = kinds.pop()
    if objective:
        _check_objective(kind, recipe, cfg.train[0], next(iter(files.values())).format)
    given: dict[str, list[dict]] = {}
    named = [("val", cfg.val), ("test", cfg.test), *((f"eval_sets.{k}", p) for k, p in cfg.eval_sets.items())]
    for name, path in named:
        if not path:
            continue
        files[path] = load(recipe, path, given_as=f"data.{name}")
        name = name.removeprefix("eval_sets.")
        allowed = {kind} | ({"chat"} if kind == "preference" and name != "val" else set())
        if files[path].kind not in allowed:
            raise DataError(f"{path}: {files[path].kind} records, but train is {kind}; use "
                            + ("preference records for val and preference or chat records for test and "
                               "eval sets." if kind == "preference" else "one kind."))
        given[name] = files[path].records
    return _Inputs(files, train, given, kind)


def _check_objective(kind: str, recipe: Recipe, path: str, fmt: str) -> None:
    """Preference data trains with train.method dpo or kto, demonstrations with the others."""
    method = recipe.train.method
    if kind == "preference" and not recipe.train.preference:
        what = "chosen and rejected answers" if fmt == "dpo" else "answers labelled desirable or not"
        learns = "prompts and rewards" if method == "grpo" else "demonstrations"
        raise DataError(f"{path}: preference data ({fmt}: a prompt with {what}), but train.method is "
                        f"{method}, which learns from {learns}. Set train.method: dpo (pairs) or kto "
                        "(labelled answers), or train on chat / instruction data.")
    if kind != "preference" and recipe.train.preference:
        raise DataError(f"{path}: {kind} records, but train.method {method} learns from preference data: "
                        + ("rows with a prompt, a chosen and a rejected answer." if method == "dpo" else
                           "rows with a prompt, a completion and label true/false (or DPO pairs).")
                        + " Export them from a served model with `tunesmith feedback export`.")


def _first_report(inputs: _Inputs, recipe: Recipe) -> DataReport:
    report = DataReport(
        kind=inputs.kind,
        files={path: FileReport(format=f.format, valid_rows=len(f.records), invalid_rows=len(f.invalid),
                                invalid=[vars(i) for i in f.invalid[:MAX_LISTED]],
                                non_text_parts_dropped=dict(f.non_text_parts) or None)
               for path, f in inputs.files.items()},
        loaded_train_rows=len(inputs.train))
    if recipe.data.clean.enabled:  # done row by row while loading, so that rows are judged cleaned
        report.clean = dict(sum((f.clean_counts for f in inputs.files.values()), Counter()))
    return report


def _nothing_left(report: DataReport) -> str:
    """Why no training row is left, step by step (the report is not written when this fails)."""
    steps = [f"{report.loaded_train_rows} training rows loaded"]
    dropped = report.filters.dropped if report.filters else {}
    if dropped:
        steps.append("quality filters dropped " + ", ".join(f"{n} ({k})" for k, n in dropped.items()))
    if report.dedup.exact_removed or report.dedup.near_removed:
        steps.append(f"{report.dedup.exact_removed} exact and {report.dedup.near_removed} near duplicates "
                     "removed")
    for name, entry in (report.leakage.sets.items() if report.leakage else []):
        if entry.removed_from_train:
            steps.append(f"{entry.removed_from_train} removed as copies of {name} rows "
                         "(data.leakage.action: drop_from_train)")
    if report.privacy and report.privacy.rows_dropped:
        steps.append(f"{report.privacy.rows_dropped} dropped for personal data (data.privacy.mode: drop)")
    return (f"{', '.join(report.files)}: no training rows left: " + "; ".join(steps) + ". Add training "
            "data, or relax the step that removed the rows (data.filters, data.dedup, data.leakage.action: "
            "flag, data.privacy.mode).")


def print_stats(report: DataReport) -> None:
    print_report_summary(report)


def load_splits(run_dir: RunDir) -> dict[str, list[dict[str, Any]]]:
    """The splits a previous data stage wrote (train, val, test, eval sets)."""
    if not run_dir.split("train").exists():
        raise DataError(f"{run_dir.root}: no prepared data. Run `tunesmith data prepare RECIPE` first.")
    return {p.stem: read_jsonl(p) for p in sorted(run_dir.data.glob("*.jsonl"))}
