"""Per-example task metrics on generated answers. Each returns 1.0 (right) or 0.0 (wrong),
so a set's score is their mean and paired comparisons stay possible.

    exact_match("  Paris ", "Paris") == 1.0         # whitespace-normalised string equality
    json_fields('{"a": 1, "b": 2}', '{"a": 1}', ["a"]) == 1.0
"""

from __future__ import annotations

import json
import re
from typing import Any

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (models often wrap it in prose), or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def json_fields(prediction: str, reference: str, fields: list[str]) -> float:
    """1.0 when the prediction holds a JSON object whose `fields` all equal the reference's."""
    predicted, expected = parse_json_object(prediction), parse_json_object(reference)
    if predicted is None or expected is None:
        return 0.0
    return float(all(predicted.get(f) == expected.get(f) for f in fields))


def score(metric: str, prediction: str, reference: str, fields: list[str]) -> float | None:
    if metric == "exact_match":
        return exact_match(prediction, reference)
    if metric == "json_fields":
        return json_fields(prediction, reference, fields)
    return None
