"""The data report: numbers per split (lengths, diversity, labels), a terminal summary, and a
self-contained HTML page with figures (PNG embedded as base64, no network needed)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from statistics import quantiles
from typing import Any

from tunesmith.artifacts import DataReport
from tunesmith.data.balance import distribution, entropy_bits
from tunesmith.data.filters import answers
from tunesmith.files import write_text
from tunesmith.render import figure_png, render

_WORD = re.compile(r"\w+", re.UNICODE)
HISTOGRAM_BINS = 20


class LengthCounter:
    """Length of a record in tokens of the recipe's tokenizer (words when there is none),
    remembered by content: the filters and every split's report ask about the same rows."""

    def __init__(self, tokenizer: Any, system_prompt: str | None, family: str = "causal_lm") -> None:
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.family = family
        """causal_lm: the chat rendering's tokens; encoder: the tokens it reads (text or user turns);
        seq2seq: the prompt's tokens and the answer's (T5 has no chat template)."""
        self.unit = "words" if tokenizer is None else "tokens"
        self._seen: dict[str, int] = {}

    def __call__(self, record: dict[str, Any]) -> int:
        content = {k: v for k, v in record.items() if k != "meta"}  # preference rows differ in answers
        key = json.dumps(content, ensure_ascii=False, sort_keys=True)
        if key not in self._seen:
            if self.tokenizer is None:
                self._seen[key] = len(_WORD.findall(key))
            elif self.family == "encoder":
                from tunesmith.models.classifier import input_text

                self._seen[key] = len(self.tokenizer(input_text(record))["input_ids"])
            elif self.family == "seq2seq":
                from tunesmith.models.classifier import input_text

                answer = answers(record)[-1:] or [""]
                self._seen[key] = len(self.tokenizer(input_text(record) + "\n" + answer[0])["input_ids"])
            else:
                from tunesmith.models.chat import tokenize_record

                self._seen[key] = len(tokenize_record(self.tokenizer, record, "all", 10**9,
                                                      self.system_prompt)["input_ids"])
        return self._seen[key]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over `texts` (diversity; 1.0 = nothing repeats)."""
    grams: Counter = Counter()
    for text in texts:
        words = _WORD.findall(text.lower())
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


PERCENTILES = (50, 90, 99)


def percentiles(values: list[int]) -> dict[str, float]:
    """p50, p90, p99 and max of lengths (one value: all of them that value)."""
    if len(values) == 1:
        return {f"p{p}": float(values[0]) for p in PERCENTILES} | {"max": float(values[0])}
    cuts = quantiles(values, n=100, method="inclusive")
    return {f"p{p}": cuts[p - 1] for p in PERCENTILES} | {"max": float(max(values))}


def describe(rows: list[dict], length: LengthCounter) -> dict[str, Any]:
    lengths, unit = [length(r) for r in rows], length.unit
    counts, edges = _histogram(lengths)
    outputs = [a for r in rows for a in answers(r)] or [r.get("text", "") for r in rows]
    out: dict[str, Any] = {
        "rows": len(rows),
        "length_unit": unit,
        "length": percentiles(lengths),
        "histogram": {"counts": counts, "edges": edges},
        "distinct_1": distinct_n(outputs, 1),
        "distinct_2": distinct_n(outputs, 2),
    }
    if rows and "label" in rows[0]:
        labels = distribution(rows, "label")
        out["labels"] = labels
        out["label_entropy_bits"] = entropy_bits(labels)
    groups = distribution(rows, "meta.group")
    if set(groups) != {""}:
        out["groups"] = groups
    return out


def _histogram(values: list[int]) -> tuple[list[int], list[float]]:
    low, high = min(values), max(values)
    width = max((high - low) / HISTOGRAM_BINS, 1)
    counts = [0] * HISTOGRAM_BINS
    for value in values:
        counts[min(int((value - low) / width), HISTOGRAM_BINS - 1)] += 1
    return counts, [low + i * width for i in range(HISTOGRAM_BINS + 1)]


def print_report_summary(report: DataReport) -> None:
    from rich.table import Table

    from tunesmith.console import out as console
    table = Table(title="data")
    for column in ("file", "format", "valid", "invalid"):
        table.add_column(column, justify="left" if column in ("file", "format") else "right")
    for path, info in report.files.items():
        table.add_row(path, info.format, str(info.valid_rows), str(info.invalid_rows))
    console.print(table)
    for line in summary_lines(report):
        console.print(line, highlight=False)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def summary_lines(report: DataReport) -> list[str]:
    lines = [f"loaded train rows {report.loaded_train_rows}"]
    if report.clean:
        lines.append("cleaned: " + _counts(report.clean))
    if report.filters and report.filters.dropped:
        lines.append("filtered: " + _counts(report.filters.dropped))
    dedup = report.dedup
    lines.append(f"duplicates removed: exact {dedup.exact_removed}, near {dedup.near_removed}")
    if dedup.answer_clusters:
        top = dedup.answer_clusters[0]
        lines.append(f"templated answers: {len(dedup.answer_clusters)} clusters, largest "
                     f"{top['size']}x {top['example'][:40]!r}")
    for name, entry in (report.leakage.sets.items() if report.leakage else []):
        overlap = entry.ngram_overlap
        overlap, removed = entry.ngram_overlap, entry.removed_from_train
        lines.append(f"leakage {name}: {entry.duplicates_of_train} near/exact copies of train, "
                     f"{overlap['rows_with_overlap']} rows share a {overlap['n']}-gram"
                     + (f", {removed} train rows removed" if removed else ""))
    if report.privacy:
        lines.append("privacy: " + _counts(report.privacy.model_dump(exclude_none=True)))
    if report.augment:
        lines.append(f"augmented: +{report.augment.rows_added} train rows")
    if report.bias:
        flags = report.bias["audit"]["flags"]
        lines += [f"bias audit flag: {flag}" for flag in flags] or ["bias audit: no group skewed to a class"]
        mitigation = report.bias.get("mitigation")
        if mitigation:
            where = ", ".join(mitigation["dimensions"]) or "nothing"
            done = [f"+{mitigation['rows_added']} train rows"] if mitigation["rows_added"] else []
            if mitigation.get("reweight"):
                weights = mitigation["reweight"]
                done.append(f"loss weights {weights['min_weight']:.2f} to {weights['max_weight']:.2f}")
            lines.append(f"bias mitigation {', '.join(mitigation['methods'])} on {where}: "
                         + (", ".join(done) or "nothing to change"))
    lines.append("splits: " + _counts(report.splits))
    return lines


def _length_figure(describe_by_split: dict[str, Any]) -> str:
    def draw(axis):
        for name, info in describe_by_split.items():
            edges = info["histogram"]["edges"]
            axis.stairs(info["histogram"]["counts"], edges, label=name)
        axis.set_xlabel(next(iter(describe_by_split.values()))["length_unit"] + " per row")
        axis.set_ylabel("rows")
        axis.legend()
    return figure_png(draw)


def _distribution_figure(distribution_by_split: dict[str, dict[str, int]]) -> str:
    train = distribution_by_split.get("train", {})
    keys = list(train)[:20]

    def draw(axis):
        axis.barh([k[:40] for k in keys], [train[k] for k in keys])
        axis.invert_yaxis()
        axis.set_xlabel("training rows")
        axis.tick_params(axis="y", labelsize=7)
    return figure_png(draw)


def write_html(report: DataReport, path: Path) -> None:
    """A self-contained page: tables of every count, and the figures inline."""
    dedup, leakage = report.dedup, report.leakage
    write_text(path, render(
        "data_report.html.j2", report=report,
        files=report.file_rows(),
        licenses=[[f.path, f.role, f.license, f.declared_in, f.source or "-", f.attribution or "-",
                   "-" if f.rows_kept is None else f.rows_kept] for f in report.licenses.files]
        if report.licenses else [],
        invalid=[[i["where"], i["error"]] for f in report.files.values() for i in f.invalid],
        splits=[[name, info["rows"], f"{info['length']['p50']:.0f}", f"{info['length']['p90']:.0f}",
                 f"{info['length']['max']:.0f}", f"{info['distinct_1']:.3f}", f"{info['distinct_2']:.3f}",
                 f"{info.get('label_entropy_bits', '')}"] for name, info in report.describe.items()],
        length_figure=_length_figure(report.describe) if report.describe else None,
        filter_examples=[[reason, e["where"], e["text"]] for reason, items in
                         (report.filters.examples.items() if report.filters else []) for e in items],
        clusters=[[c["kind"], c["size"], c["kept"], c["example"]] for c in dedup.clusters],
        answer_clusters=[[c["kind"], c["size"], c["rows"], c["example"]]
                         for c in getattr(dedup, "answer_clusters", None) or []],
        leakage=[[name, e.duplicates_of_train, e.train_rows_involved, e.ngram_overlap["rows_with_overlap"],
                  f"{e.ngram_overlap['ngram_share']:.3f}"] for name, e in leakage.sets.items()]
        if leakage else [],
        distribution_figure=_distribution_figure(report.balance.distribution)
        if report.balance.distribution else None,
        extra=[(key.title(), json.dumps(section, indent=1)) for key, section in
               (("privacy", report.privacy and report.privacy.model_dump()),
                ("augment", report.augment and report.augment.model_dump()))
               if section]))
