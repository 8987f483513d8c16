"""The data stage: load, validate, clean, filter, deduplicate, split leak-free, balance, augment.

    tunesmith data prepare recipes/demo.yaml      # writes runs/<run>/data/
    tunesmith data inspect FILE                   # the same checks on one file, writes nothing

`run(recipe, run_dir)` reads `data.train` (+ `val`, `test`, `eval_sets`), converts rows to the
canonical records of DESIGN.md and then, in this order: normalises text and chat shape,
scrubs personal data (opt-in), drops low-quality training rows, removes exact and near
duplicates from train, holds out validation/test shares with a seeded stratified split,
removes train/eval leakage, rebalances and augments the training split, audits its
demographic groups per answer class (and mitigates, opt-in: data/bias.py). It writes
`data/<split>.jsonl`, `data/report.json` and `data/report.html`. It loads a tokenizer (for
token lengths) but no model, so bad data fails in seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunesmith.artifacts import DataReport, dump, save
from tunesmith.data import balance, bias, leakage, privacy
from tunesmith.data.augment import augment
from tunesmith.data.clean import normalise_record
from tunesmith.data.dedup import NearDupParams, exact_duplicate_groups, near_duplicate_clusters
from tunesmith.data.filters import answers, drop_reason
from tunesmith.data.load import LoadedFile, load_file
from tunesmith.data.readers import ReadOptions
from tunesmith.data.report import LengthCounter, describe, print_report_summary, write_html
from tunesmith.errors import DataError
from tunesmith.files import read_jsonl, write_jsonl
from tunesmith.recipe import Recipe
from tunesmith.records import preference_texts, turn_text
from tunesmith.rundir import RunDir

MAX_LISTED = 50
EXAMPLES_PER_REASON = 3


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


def match_text(record: dict[str, Any]) -> str:
    """What duplicate and leakage checks compare: every turn but the (shared) system prompt."""
    if "messages" in record:
        return "\n".join(turn_text(m) for m in record["messages"] if m["role"] != "system")
    if "prompt" in record:
        return "\n".join(preference_texts(record, with_system=False))
    return record["text"]


def where(record: dict[str, Any]) -> str:
    return f"{record['meta'].get('source')}:{record['meta'].get('line')}"


def near_params(recipe: Recipe) -> NearDupParams:
    d = recipe.data.dedup
    return NearDupParams(d.shingle_size, d.num_perm, d.bands, d.rows, d.threshold)


def read_options(recipe: Recipe) -> ReadOptions:
    cfg = recipe.data
    return ReadOptions(cfg.encoding, cfg.max_row_chars, cfg.max_depth, cfg.text_separator)


def load(recipe: Recipe, path: str, fmt: str | None = None, on_invalid: str | None = None) -> LoadedFile:
    """One file as the recipe reads it: format, columns, limits, cleaning, validation."""
    cfg = recipe.data
    return load_file(path, fmt or cfg.format, cfg.columns, on_invalid or cfg.on_invalid, cfg.max_rows,
                     read_options(recipe), normalise_record if cfg.clean.enabled else None)


def _scrub(records: list[dict], mode: str, counts: Counter) -> list[dict]:
    kept = []
    for record in records:
        found: Counter = Counter()
        if "messages" in record:
            messages = []
            for message in record["messages"]:
                text, hits = privacy.scrub(message["content"])
                found += hits
                messages.append({**message, "content": text})
            scrubbed = {**record, "messages": messages}
        else:
            text, hits = privacy.scrub(record["text"])
            found += hits
            scrubbed = {**record, "text": text}
        counts.update(found)
        if found and mode == "drop":
            counts["rows_dropped"] += 1
            continue
        kept.append(scrubbed if mode == "mask" else record)
    return kept


def _filter(records: list[dict], recipe: Recipe, length: LengthCounter, report: dict) -> list[dict]:
    cfg = recipe.filters
    labels = Counter(r["label"] for r in records if "label" in r)
    kept, dropped = [], Counter()
    examples: dict[str, list] = {}
    for record in records:
        tokens = length(record)
        reason = drop_reason(record, tokens, cfg, labels)
        if reason is None:
            kept.append(record)
            continue
        dropped[reason] += 1
        shown = examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append({"where": where(record), "text": match_text(record)[:300], "tokens": tokens})
    report["filters"] = {"dropped": dict(dropped), "examples": examples}
    return kept


def _dedup(records: list[dict], recipe: Recipe, report: dict) -> list[dict]:
    cfg = recipe.data.dedup
    texts = [match_text(r) for r in records]
    removed: set[int] = set()
    section: dict[str, Any] = {"exact_removed": 0, "near_removed": 0, "clusters": []}
    if cfg.exact:
        for group in exact_duplicate_groups(texts):
            removed.update(group[1:])
            section["exact_removed"] += len(group) - 1
            section["clusters"].append(_cluster_entry("exact", group, records, texts))
    if cfg.near:
        for cluster in near_duplicate_clusters(texts, near_params(recipe)):
            extra = [i for i in cluster[1:] if i not in removed]
            if cluster[0] in removed or not extra:
                continue
            removed.update(extra)
            section["near_removed"] += len(extra)
            section["clusters"].append(_cluster_entry("near", cluster, records, texts))
    section["clusters"].sort(key=lambda c: -c["size"])
    section["clusters"] = section["clusters"][:MAX_LISTED]
    section["answer_clusters"] = _answer_clusters(records, recipe)
    report["dedup"] = section
    return [r for i, r in enumerate(records) if i not in removed]


def _cluster_entry(kind: str, members: list[int], records: list[dict], texts: list[str]) -> dict:
    return {"kind": kind, "size": len(members), "kept": where(records[members[0]]),
            "example": texts[members[0]][:200], "members": [where(records[i]) for i in members[:10]]}


def _answer_clusters(records: list[dict], recipe: Recipe) -> list[dict]:
    """Templated answers: the same (or nearly the same) assistant text across many rows.
    Reported, not removed: repeated answers to different prompts can be legitimate."""
    flat = [(i, a) for i, r in enumerate(records) for a in answers(r)]
    if not flat:
        return []
    texts = [a for _, a in flat]
    clusters = [("exact", g) for g in exact_duplicate_groups(texts)]
    in_exact = {i for _, g in clusters for i in g}
    clusters += [("near", c) for c in near_duplicate_clusters(texts, near_params(recipe))
                 if not set(c) <= in_exact]
    out = [{"kind": kind, "size": len(members), "example": texts[members[0]][:200],
            "rows": len({flat[m][0] for m in members})} for kind, members in clusters]
    return sorted(out, key=lambda c: -c["size"])[:MAX_LISTED]


def _split(train: list[dict], recipe: Recipe, strata: str, report: dict) -> dict[str, list[dict]]:
    cfg = recipe.data
    if not train and report.get("strict", True):
        raise DataError(_nothing_left(report))
    splits: dict[str, list[dict]] = {}
    total = len(train)
    for name, given, fraction, offset in (("val", cfg.val, cfg.val_fraction, 0),
                                          ("test", cfg.test, cfg.test_fraction, 1)):
        if given or fraction <= 0:
            continue
        share = fraction * total / max(len(train), 1)  # fractions are of the whole train file
        kept, held = balance.stratified_split(train, min(share, 0.9), strata, cfg.seed + offset)
        if not held or not kept:
            raise DataError(f"too few training rows ({len(train)}) to hold out {fraction:.0%} for "
                            f"{name}; add data, or give data.{name} as a file.")
        splits[name] = [train[i] for i in held]
        train = [train[i] for i in kept]
    splits["train"] = train
    report["split"] = {"stratified_by": strata, "seed": cfg.seed}
    return splits


def _leakage(splits: dict[str, list[dict]], recipe: Recipe, report: dict) -> None:
    cfg = recipe.data.leakage
    section: dict[str, Any] = {"action": cfg.action, "sets": {}}
    names = [n for n in splits if n != "train"]
    train, train_texts = splits["train"], [match_text(r) for r in splits["train"]]
    other_texts = {name: [match_text(r) for r in splits[name]] for name in names}
    pairs_by_set = leakage.cross_duplicates_by_set(train_texts, other_texts, near_params(recipe))
    dropped: set[int] = set()  # train rows removed for an earlier set no longer count
    for name in names:
        pairs = [(i, j, s) for i, j, s in pairs_by_set[name] if i not in dropped]
        leaked_train = sorted({i for i, _, _ in pairs})
        leaked_other = sorted({j for _, j, _ in pairs})
        entry = {
            "duplicates_of_train": len(leaked_other),
            "train_rows_involved": len(leaked_train),
            "examples": [{"train": where(train[i]), name: where(splits[name][j]),
                          "jaccard": round(s, 3)} for i, j, s in pairs[:10]],
            "ngram_overlap": leakage.ngram_overlap(
                [t for i, t in enumerate(train_texts) if i not in dropped], other_texts[name], cfg.ngram),
        }
        if cfg.action == "drop_from_train" and leaked_train:
            dropped.update(leaked_train)
            entry["removed_from_train"] = len(leaked_train)
        elif cfg.action == "drop_from_eval" and leaked_other:
            drop = set(leaked_other)
            splits[name] = [r for i, r in enumerate(splits[name]) if i not in drop]
            entry["removed_from_" + name] = len(drop)
        section["sets"][name] = entry
    splits["train"] = [r for i, r in enumerate(train) if i not in dropped]
    for path in cfg.benchmark_files:
        bench = [match_text(r) for r in load(recipe, path, fmt="auto", on_invalid="skip").records]
        train_texts = [match_text(r) for r in splits["train"]]
        pairs = leakage.cross_duplicates(train_texts, bench, near_params(recipe))
        contaminated = {i for i, _, _ in pairs}
        if cfg.action != "flag":
            splits["train"] = [r for i, r in enumerate(splits["train"]) if i not in contaminated]
        section["sets"][f"benchmark:{path}"] = {
            "duplicates_of_train": len({j for _, j, _ in pairs}),
            "train_rows_involved": len(contaminated),
            "ngram_overlap": leakage.ngram_overlap(bench, train_texts, cfg.ngram),
        }
    report["leakage"] = section


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
        files[path] = load(recipe, path)
        train += files[path].records
    kinds = {f.kind for f in files.values()}
    if len(kinds) > 1:
        raise DataError(f"data.train mixes record kinds {sorted(kinds)}; train on one kind at a time.")
    kind = kinds.pop()
    if objective:
        _check_objective(kind, recipe, cfg.train[0], next(iter(files.values())).format)
    given: dict[str, list[dict]] = {}
    for name, path in (("val", cfg.val), ("test", cfg.test), *cfg.eval_sets.items()):
        if not path:
            continue
        files[path] = load(recipe, path)
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
        raise DataError(f"{path}: preference data ({fmt}: a prompt with {what}), but train.method is "
                        f"{method}, which learns from demonstrations. Set train.method: dpo (pairs) or kto "
                        "(labelled answers), or train on chat / instruction data.")
    if kind != "preference" and recipe.train.preference:
        raise DataError(f"{path}: {kind} records, but train.method {method} learns from preference data: "
                        + ("rows with a prompt, a chosen and a rejected answer." if method == "dpo" else
                           "rows with a prompt, a completion and label true/false (or DPO pairs).")
                        + " Export them from a served model with `tunesmith feedback export`.")


def _first_report(inputs: _Inputs, recipe: Recipe) -> dict[str, Any]:
    report: dict[str, Any] = {
        "kind": inputs.kind,
        "files": {path: {"format": f.format, "valid_rows": len(f.records),
                         "invalid_rows": len(f.invalid),
                         "invalid": [vars(i) for i in f.invalid[:MAX_LISTED]]}
                  | ({"non_text_parts_dropped": dict(f.non_text_parts)} if f.non_text_parts else {})
                  for path, f in inputs.files.items()},
        "loaded_train_rows": len(inputs.train),
    }
    if recipe.data.clean.enabled:  # done row by row while loading, so that rows are judged cleaned
        report["clean"] = dict(sum((f.clean_counts for f in inputs.files.values()), Counter()))
    return report


def _finish_splits(splits: dict[str, list[dict]], given: dict[str, list[dict]], recipe: Recipe,
                   strata: str, report: dict[str, Any]) -> dict[str, list[dict]]:
    """Add the given eval sets, stop leakage, rebalance and augment train; train and val first."""
    cfg = recipe.data
    splits.update(given)
    for name in [n for n in splits if n not in ("train", "val")]:
        for record in splits[name]:
            record["meta"].setdefault("domain", "in-domain" if name == "test" else name)
    _leakage(splits, recipe, report)
    splits["train"], weights = balance.rebalance(splits["train"], cfg.balance.strategy, strata,
                                                 cfg.balance.cap, cfg.seed)
    report["balance"] = {"strategy": cfg.balance.strategy, "by": strata, "class_weights": weights,
                         "distribution": {n: balance.distribution(rows, strata)
                                          for n, rows in splits.items()} if strata != "none" else {}}
    if cfg.augment.methods:
        extra = augment(splits["train"], cfg.augment, cfg.seed)
        splits["train"] = splits["train"] + extra
        report["augment"] = {"methods": cfg.augment.methods, "rows_added": len(extra)}
    splits["train"], report["bias"] = bias.run(splits["train"], recipe)
    if not splits["train"] and report.get("strict", True):
        raise DataError(_nothing_left(report))
    return {"train": splits.pop("train"), "val": splits.pop("val", [])} | splits


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
    """Every step of the data stage, in memory: nothing is written. `objective=False` takes any
    record kind whatever train.method is (`data inspect` describes a file, it does not train)."""
    cfg = recipe.data
    inputs = _load_inputs(recipe, objective)
    report = _first_report(inputs, recipe)
    report["strict"] = objective  # describing a file (data inspect): the filters may leave no row
    train, given = inputs.train, inputs.given
    if cfg.privacy.mode != "off":
        found: Counter = Counter()
        train = _scrub(train, cfg.privacy.mode, found)
        given = {n: _scrub(rows, cfg.privacy.mode, found) for n, rows in given.items()}
        report["privacy"] = {"mode": cfg.privacy.mode, **found}
    if cfg.filters.enabled and tokenizer is None:
        from tunesmith.models.loading import load_tokenizer

        tokenizer = load_tokenizer(recipe.model)
    length = LengthCounter(tokenizer, cfg.system_prompt, family=recipe.model.family)
    if cfg.filters.enabled:
        train = _filter(train, recipe, length, report)
    train = _dedup(train, recipe, report)
    strata = balance.resolve_strata(train, cfg.balance.by)
    ordered = _finish_splits(_split(train, recipe, strata, report), given, recipe, strata, report)
    report.pop("strict")
    report["splits"] = {name: len(rows) for name, rows in ordered.items()}
    report["describe"] = {name: describe(rows, length) for name, rows in ordered.items() if rows}
    return DataResult(ordered, inputs.kind, DataReport.model_validate(report), inputs.files, length)


def _nothing_left(report: dict[str, Any]) -> str:
    """Why no training row is left, step by step (the report is not written when this fails)."""
    steps = [f"{report['loaded_train_rows']} training rows loaded"]
    dropped = report.get("filters", {}).get("dropped", {})
    if dropped:
        steps.append("quality filters dropped " + ", ".join(f"{n} ({k})" for k, n in dropped.items()))
    dedup = report.get("dedup", {})
    if dedup.get("exact_removed") or dedup.get("near_removed"):
        steps.append(f"{dedup['exact_removed']} exact and {dedup['near_removed']} near duplicates removed")
    for name, entry in report.get("leakage", {}).get("sets", {}).items():
        if entry.get("removed_from_train"):
            steps.append(f"{entry['removed_from_train']} removed as copies of {name} rows "
                         "(data.leakage.action: drop_from_train)")
    if report.get("privacy", {}).get("rows_dropped"):
        steps.append(f"{report['privacy']['rows_dropped']} dropped for personal data "
                     "(data.privacy.mode: drop)")
    return (f"{', '.join(report['files'])}: no training rows left: " + "; ".join(steps) + ". Add training "
            "data, or relax the step that removed the rows (data.filters, data.dedup, data.leakage.action: "
            "flag, data.privacy.mode).")


def print_stats(report: DataReport) -> None:
    print_report_summary(report)


def load_splits(run_dir: RunDir) -> dict[str, list[dict[str, Any]]]:
    """The splits a previous data stage wrote (train, val, test, eval sets)."""
    if not run_dir.split("train").exists():
        raise DataError(f"{run_dir.root}: no prepared data. Run `tunesmith data prepare RECIPE` first.")
    return {p.stem: read_jsonl(p) for p in sorted(run_dir.data.glob("*.jsonl"))}
