"""Scores of one answer against its reference: what evaluation reports per example, the server's
canary checks, and what GRPO's `metric` reward pays (train/rewards.py), computed one way.

    exact_match("  Paris ", "Paris") == 1.0         whitespace-normalised string equality
    token_f1("the cat sat", "the cat") == 0.8        SQuAD-style bag-of-tokens F1
    rouge_l(prediction, reference)                   ROUGE-L F-measure (rouge-score)
    json_valid('{"a": 1} trailing') == 1.0           a JSON object can be parsed from the answer
    json_fields('{"a": 1, "b": 2}', '{"a": 1}', ["a"]) == 1.0
    score(metric, prediction, reference, fields)     the recipe's eval.metric for one answer
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from tunesmith.records import answer_field, parse_json_object

_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+", re.UNICODE)
PER_EXAMPLE = ("exact_match", "token_f1", "rouge_l", "json_valid")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted = _TOKEN.findall(prediction.lower())
    expected = _TOKEN.findall(reference.lower())
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def json_valid(prediction: str, reference: str = "") -> float:
    return float(parse_json_object(prediction) is not None)


def json_fields(prediction: str, reference: str, fields: list[str]) -> float:
    """1.0 when the prediction holds a JSON object whose `fields` all equal the reference's."""
    predicted, expected = parse_json_object(prediction), parse_json_object(reference)
    if predicted is None or expected is None:
        return 0.0
    return float(all(predicted.get(f) == expected.get(f) for f in fields))


def field_value(text: str, field: str | None) -> str:
    """The label in an answer: a JSON field when `field` is set, else the whole answer."""
    if field is None:
        return normalise(text)
    value = answer_field(text, field)
    return "<invalid>" if value is None else value


def score(metric: str, prediction: str, reference: str, fields: list[str]) -> float | None:
    """The recipe's primary metric for one example."""
    if metric == "json_fields":
        return json_fields(prediction, reference, fields)
    if metric == "none":
        return None
    return PER_EXAMPLE_FUNCTIONS[metric](prediction, reference)


PER_EXAMPLE_FUNCTIONS = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l,
                         "json_valid": json_valid}


def has_format(text: str, fields: list[str]) -> bool:
    """serve.output_check's test: the answer holds a JSON object with (at least) these fields."""
    parsed = parse_json_object(text)
    return parsed is not None and all(f in parsed for f in fields)
