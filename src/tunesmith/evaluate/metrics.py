"""Task metrics on generated answers, from the standard libraries (sacrebleu, rouge-score,
scikit-learn); every headline number comes with a bootstrap 95% CI.

Per-example scores (paired comparisons, bias slices, error analysis) are tunesmith.answer_scores'
(shared with serving and GRPO's rewards).
Corpus scores: BLEU and chrF (sacrebleu). Label scores: accuracy, macro/micro precision,
recall and F1, and a confusion matrix (scikit-learn).
"""

from __future__ import annotations

from typing import Any

from tunesmith.answer_scores import (
    PER_EXAMPLE,
    PER_EXAMPLE_FUNCTIONS,
    exact_match,
    field_value,
    json_fields,
    json_valid,
    normalise,
    rouge_l,
    score,
    token_f1,
)
from tunesmith.artifacts import ModelScores
from tunesmith.evaluate.stats import bootstrap_ci
from tunesmith.records import parse_json_object

__all__ = ["PER_EXAMPLE", "exact_match", "field_value", "json_valid", "normalise", "parse_json_object",
           "rouge_l", "score", "token_f1"]  # re-exported: one place for evaluation's per-example scores

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
