"""Task metrics on generated answers, from the standard libraries (sacrebleu, rouge-score,
scikit-learn); every headline number comes with a bootstrap 95% CI.

Per-example scores (paired comparisons, bias slices, error analysis):
    exact_match("  Paris ", "Paris") == 1.0         whitespace-normalised string equality
    token_f1("the cat sat", "the cat") == 0.8        SQuAD-style bag-of-tokens F1
    rouge_l(prediction, reference)                   ROUGE-L F-measure (rouge-score)
    json_valid('{"a": 1} trailing') == 1.0           a JSON object can be parsed from the answer
    json_fields('{"a": 1, "b": 2}', '{"a": 1}', ["a"]) == 1.0
Corpus scores: BLEU and chrF (sacrebleu). Label scores: accuracy, macro/micro precision,
recall and F1, and a confusion matrix (scikit-learn).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any

from tunesmith.artifacts import ModelScores
from tunesmith.evaluate.stats import bootstrap_ci
from tunesmith.records import answer_field, parse_json_object

__all__ = ["parse_json_object"]  # re-exported: serving and analysis import it from here

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


def _with_ci(values: list[float]) -> dict[str, Any]:
    low, high = bootstrap_ci(values)
    return {"value": sum(values) / len(values), "ci_low": low, "ci_high": high}


def corpus_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """BLEU and chrF over the whole set, with bootstrap CIs over examples."""
    import sacrebleu

    def bleu(indices) -> float:
        return sacrebleu.corpus_bleu([predictions[i] for i in indices],
                                     [[references[i] for i in indices]]).score / 100

    def chrf(indices) -> float:
        return sacrebleu.corpus_chrf([predictions[i] for i in indices],
                                     [[references[i] for i in indices]]).score / 100

    out = {}
    everything = range(len(predictions))
    for name, function in (("bleu", bleu), ("chrf", chrf)):
        low, high = bootstrap_ci(statistic=function, n=len(predictions), resamples=200)
        out[name] = {"value": function(everything), "ci_low": low, "ci_high": high}
    return out


def label_scores(predictions: list[str], references: list[str], field: str | None) -> dict[str, Any]:
    """Accuracy, macro/micro P/R/F1 and the confusion matrix of labels (scikit-learn)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = [field_value(p, field) for p in predictions]
    expected = [field_value(r, field) for r in references]
    labels = sorted(set(expected))
    correct = [float(p == e) for p, e in zip(predicted, expected, strict=True)]
    out: dict[str, Any] = {"field": field, "accuracy": _with_ci(correct), "labels": labels}
    for average in ("macro", "micro"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            expected, predicted, labels=labels, average=average, zero_division=0)
        out[average] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    matrix_labels = labels + sorted(set(predicted) - set(labels))
    out["confusion"] = {"labels": matrix_labels,
                        "matrix": confusion_matrix(expected, predicted, labels=matrix_labels).tolist()}
    return out


def set_scores(predictions: list[str], references: list[str], metric: str, fields: list[str],
               label_field: str | None, labels: bool) -> tuple[ModelScores, dict[str, list[float]]]:
    """All metrics of one model on one set (the primary one, `metric`, as its value), and the
    per-example scores behind them."""
    per_example = {name: [function(p, r) for p, r in zip(predictions, references, strict=True)]
                   for name, function in PER_EXAMPLE_FUNCTIONS.items()}
    if metric == "json_fields":
        per_example["json_fields"] = [json_fields(p, r, fields)
                                      for p, r in zip(predictions, references, strict=True)]
        for field in fields:
            per_example[f"field:{field}"] = [json_fields(p, r, [field])
                                             for p, r in zip(predictions, references, strict=True)]
    scores = {name: _with_ci(values) for name, values in per_example.items()}
    scores.update(corpus_scores(predictions, references))
    result = ModelScores(metrics=scores, labels=label_scores(predictions, references, label_field)
                         if labels else None)
    if metric != "none":
        primary = result.metrics[metric]
        result.value, result.ci = primary.value, (primary.ci_low, primary.ci_high)
    return result, per_example
