"""Bias in the training data: an audit of which demographic groups the prompts mention, per
answer class, and mitigations whose effect the evaluation measures (`data.bias`).

Audit. For every dimension of the lexicon (data/groups.py plus the recipe's `data.bias.lexicon`)
each training row is put in the group its prompt mentions (rows mentioning none are not counted;
rows mentioning several are counted as mixed and left out of the test). Its answer classes are
the answer itself when the answers take few values, or each field of a JSON answer that does
(`{"category": ..., "priority": ...}` gives two). For each (dimension, class field): the
group x class table, a chi-square test of independence (a permutation test, 2,000 shuffles,
when an expected count is below 5, where the chi-square approximation fails), Cramér's V as the
effect size, and the cell furthest from independence (adjusted residual), e.g. "arabic ->
priority=high: 80% of 25 rows against 28% overall". A pair is flagged when p < `alpha` and
V >= `min_effect`; flags go to the data report, the run report and the model card.

Mitigation (`data.bias.mitigate`), on the training split only, after the split:
- `counterfactual`: every row mentioning a group of a mitigated dimension gets a copy per other
  group with every term swapped (the i-th term of one group for the i-th of another, in every
  turn, so a name in the answer follows the prompt), marked in meta like other augmentation.
  Each group then comes with the same answers: the association has nothing to learn from.
- `reweight`: each row gets a loss weight P(group) P(class) / P(group, class) (Kamiran and
  Calders' reweighing), so that group and class are independent in the weighted data.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

from tunesmith.data.filters import answers
from tunesmith.data.groups import counterfactuals, groups_in

MAX_CLASSES = 20
"""An answer field with more distinct values than this is free text, not a class."""
PERMUTATIONS = 2000


def prompt_text(record: dict[str, Any]) -> str:
    """What the model reads: the user turns (or the text of a classification row)."""
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m["role"] == "user"
                         and isinstance(m["content"], str))
    return str(record.get("text", ""))


def answer_classes(record: dict[str, Any]) -> dict[str, str]:
    """{field: value} of the row's answer: each scalar field of a JSON-object answer, else the
    whole answer (or label) under "answer"."""
    if "label" in record:
        return {"label": str(record["label"])}
    said = answers(record)
    if not said:
        return {}
    try:
        parsed = json.loads(said[-1])
    except (json.JSONDecodeError, TypeError):
        parsed = None
    if isinstance(parsed, dict):
        return {k: str(v) for k, v in parsed.items() if isinstance(v, str | int | bool) or v is None}
    return {"answer": said[-1].strip()}


def class_fields(records: list[dict[str, Any]]) -> dict[str, list[str | None]]:
    """The answer fields that are classes (2 to MAX_CLASSES values), each row's value or None."""
    per_row = [answer_classes(r) for r in records]
    values: dict[str, set] = {}
    for classes in per_row:
        for field, value in classes.items():
            values.setdefault(field, set()).add(value)
    return {field: [classes.get(field) for classes in per_row]
            for field, seen in values.items() if 2 <= len(seen) <= MAX_CLASSES}


def row_groups(records: list[dict[str, Any]], groups: dict[str, list[str]]) -> list[str | None]:
    """Each row's group in one dimension: the one its prompt mentions, "mixed", or None."""
    out: list[str | None] = []
    for record in records:
        found = groups_in(prompt_text(record), groups)
        out.append(next(iter(found)) if len(found) == 1 else ("mixed" if found else None))
    return out


def chi_square(table: list[list[int]]) -> tuple[float, float]:
    """(statistic, smallest expected count) of a contingency table without empty rows/columns."""
    rows, columns = [sum(r) for r in table], [sum(c) for c in zip(*table, strict=True)]
    total = sum(rows)
    statistic, smallest = 0.0, math.inf
    for i, row in enumerate(table):
        for j, observed in enumerate(row):
            expected = rows[i] * columns[j] / total
            smallest = min(smallest, expected)
            statistic += (observed - expected) ** 2 / expected
    return statistic, smallest


def _table(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str], list[list[int]]]:
    counts = Counter(pairs)
    groups, classes = sorted({g for g, _ in pairs}), sorted({c for _, c in pairs})
    return groups, classes, [[counts[(g, c)] for c in classes] for g in groups]


def independence_test(pairs: list[tuple[str, str]], seed: int) -> dict[str, Any]:
    """Chi-square test of group x class independence over (group, class) pairs: statistic,
    p-value (asymptotic, or by permutation when an expected count is below 5), Cramér's V."""
    from scipy.stats import chi2

    groups, classes, table = _table(pairs)
    statistic, smallest = chi_square(table)
    dof = (len(groups) - 1) * (len(classes) - 1)
    v = math.sqrt(statistic / (len(pairs) * (min(len(groups), len(classes)) - 1)))
    if smallest >= 5:
        return {"statistic": statistic, "dof": dof, "p_value": float(chi2.sf(statistic, dof)),
                "method": "chi-square", "cramers_v": v}
    rng = random.Random(seed)
    labels = [c for _, c in pairs]
    at_least = 0
    for _ in range(PERMUTATIONS):
        rng.shuffle(labels)
        shuffled = _table([(g, c) for (g, _), c in zip(pairs, labels, strict=True)])[2]
        at_least += chi_square(shuffled)[0] >= statistic - 1e-9
    return {"statistic": statistic, "dof": dof, "p_value": (at_least + 1) / (PERMUTATIONS + 1),
            "method": f"permutation ({PERMUTATIONS} shuffles; an expected count is {smallest:.1f} < 5)",
            "cramers_v": v}


def strongest_skew(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The group x class cell furthest above independence (adjusted residual)."""
    groups, classes, table = _table(pairs)
    total = len(pairs)
    rows, columns = [sum(r) for r in table], [sum(c) for c in zip(*table, strict=True)]
    best: dict[str, Any] = {}
    for i, group in enumerate(groups):
        for j, value in enumerate(classes):
            expected = rows[i] * columns[j] / total
            spread = math.sqrt(expected * (1 - rows[i] / total) * (1 - columns[j] / total)) or 1e-12
            residual = (table[i][j] - expected) / spread
            if not best or residual > best["residual"]:
                best = {"group": group, "class": value, "residual": residual, "group_rows": rows[i],
                        "share_in_group": table[i][j] / rows[i], "share_overall": columns[j] / total}
    return best


def audit(records: list[dict[str, Any]], lexicon: dict[str, dict[str, list[str]]], alpha: float,
          min_effect: float, seed: int) -> dict[str, Any]:
    """The audit section of the data report (see the module docstring)."""
    fields = class_fields(records)
    dimensions: dict[str, Any] = {}
    for dimension, groups in lexicon.items():
        assigned = row_groups(records, groups)
        counted = Counter(g for g in assigned if g)
        entry: dict[str, Any] = {"rows_per_group": {g: counted[g] for g in sorted(counted) if g != "mixed"},
                 "mixed_rows": counted.get("mixed", 0), "rows_without": assigned.count(None), "tests": {}}
        for field, values in fields.items():
            pairs = [(g, v) for g, v in zip(assigned, values, strict=True) if g and g != "mixed" and v]
            if len({g for g, _ in pairs}) < 2 or len({v for _, v in pairs}) < 2:
                continue
            test = independence_test(pairs, seed)
            test["skew"] = strongest_skew(pairs)
            test["flagged"] = test["p_value"] < alpha and test["cramers_v"] >= min_effect
            test["rows"] = len(pairs)
            entry["tests"][field] = test
        dimensions[dimension] = entry
    flags = [flag_text(d, f, t) for d, e in dimensions.items() for f, t in e["tests"].items() if t["flagged"]]
    return {"alpha": alpha, "min_effect": min_effect, "class_fields": sorted(fields),
            "dimensions": dimensions, "flags": flags}


def flag_text(dimension: str, field: str, test: dict[str, Any]) -> str:
    skew = test["skew"]
    return (f"{dimension} x {field}: {skew['group']} -> {field}={skew['class']} in "
            f"{100 * skew['share_in_group']:.0f}% of its {skew['group_rows']} rows against "
            f"{100 * skew['share_overall']:.0f}% overall (p={test['p_value']:.2g}, "
            f"Cramér's V {test['cramers_v']:.2f})")


def counterfactual_rows(records: list[dict[str, Any]], lexicon: dict[str, dict[str, list[str]]],
                        dimensions: list[str]) -> list[dict[str, Any]]:
    """A copy of each row per other group of each dimension its prompt mentions, every term
    swapped in every user and assistant turn; meta says from where and to which group."""
    extra = []
    for record in records:
        for dimension in dimensions:
            groups = lexicon[dimension]
            found = groups_in(prompt_text(record), groups)
            if not found or "messages" not in record:
                continue
            turns = [counterfactuals(m["content"], groups) if m["role"] != "system"
                     and isinstance(m["content"], str) else None for m in record["messages"]]
            for group in groups:
                if found == {group}:
                    continue
                messages = [{**m, "content": swapped[group]} if swapped else dict(m)
                            for m, swapped in zip(record["messages"], turns, strict=True)]
                source = f"{record['meta'].get('source')}:{record['meta'].get('line')}"
                extra.append({**record, "messages": messages,
                              "meta": {**record["meta"], "augmented_from": source,
                                       "augmentation": f"counterfactual:{dimension}:{group}"}})
    return extra


def reweigh(groups: list[str | None], classes: list[str | None]) -> list[float]:
    """Kamiran-Calders weights P(group) P(class) / P(group, class) per row (1 for rows without
    one group or a class), so that group and class are independent in the weighted data."""
    pairs = [(g, c) for g, c in zip(groups, classes, strict=True) if g and g != "mixed" and c]
    total = len(pairs)
    by_group, by_class, joint = Counter(g for g, _ in pairs), Counter(c for _, c in pairs), Counter(pairs)
    weights = []
    for group, value in zip(groups, classes, strict=True):
        if (group, value) in joint:
            weights.append(by_group[group] * by_class[value] / (total * joint[(group, value)]))
        else:
            weights.append(1.0)
    return weights


def _flagged(found: dict[str, Any]) -> dict[str, list[str]]:
    """{dimension: [class fields flagged]} of an audit."""
    return {d: [f for f, t in e["tests"].items() if t["flagged"]] for d, e in found["dimensions"].items()
            if any(t["flagged"] for t in e["tests"].values())}


def _reweight(train: list[dict[str, Any]], lexicon: dict, found: dict, dimensions: list[str]) -> dict:
    """Multiply each row's meta.weight by the reweighing weight of every flagged (dimension, field)
    pair (the field with the largest Cramér's V when the dimension was named but not flagged)."""
    fields = class_fields(train)
    pairs = []
    for dimension in dimensions:
        tests = found["dimensions"].get(dimension, {}).get("tests", {})
        chosen = [f for f, t in tests.items() if t["flagged"]] or \
            sorted(tests, key=lambda f: -tests[f]["cramers_v"])[:1]
        pairs += [(dimension, f) for f in chosen]
    for dimension, field in pairs:
        for record, weight in zip(train, reweigh(row_groups(train, lexicon[dimension]), fields[field]),
                                  strict=True):
            record["meta"]["weight"] = record["meta"].get("weight", 1.0) * weight
    weights = [r["meta"].get("weight", 1.0) for r in train]
    return {"pairs": [f"{d} x {f}" for d, f in pairs], "min_weight": min(weights), "max_weight": max(weights)}


def run(train: list[dict[str, Any]], recipe: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The data stage's bias step on the training split: the audit, then `data.bias.mitigate`;
    the (possibly extended) split and the report section (None when the audit is off)."""
    from tunesmith.data.groups import LEXICON
    from tunesmith.errors import ConfigError

    cfg = recipe.data.bias
    if not cfg.audit and not cfg.mitigate:
        return train, None
    lexicon = {**LEXICON, **recipe.eval.bias.lexicon, **cfg.lexicon}
    found = audit(train, lexicon, cfg.alpha, cfg.min_effect, recipe.data.seed)
    section: dict[str, Any] = {"audit": found}
    if not cfg.mitigate:
        return train, section
    unknown = [d for d in cfg.dimensions if d not in lexicon]
    if unknown:
        raise ConfigError(f"data.bias.dimensions: {unknown} not in the lexicon; known: {sorted(lexicon)} "
                          "(add groups with data.bias.lexicon).")
    dimensions = cfg.dimensions or sorted(_flagged(found))
    mitigation: dict[str, Any] = {"methods": cfg.mitigate, "dimensions": dimensions, "rows_added": 0}
    if dimensions and "counterfactual" in cfg.mitigate:
        extra = counterfactual_rows(train, lexicon, dimensions)
        train = train + extra
        mitigation["rows_added"] = len(extra)
        mitigation["after"] = audit(train, {d: lexicon[d] for d in dimensions}, cfg.alpha, cfg.min_effect,
                                    recipe.data.seed)
    if dimensions and "reweight" in cfg.mitigate:
        mitigation["reweight"] = _reweight(train, lexicon, found, dimensions)
    section["mitigation"] = mitigation
    return train, section
