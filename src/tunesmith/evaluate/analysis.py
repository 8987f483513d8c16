"""Error analysis and generalisation checks.

- `error_class(prediction, reference, ...)`: why an answer is wrong, one of
  empty, truncated, format_error, wrong_label, extra_text, wrong_answer (or correct).
- `worst_examples(rows, ...)`: the lowest-scoring examples of a set, for people to read.
- `top_confusions(confusion)`: the most frequent (expected -> predicted) label mistakes.
- `loss_curves(log)`: train and validation loss per step from train/log.jsonl, and the gap.
- `memorisation_rate(predictions, train_answers)`: how often a generation reproduces a
  training answer verbatim although its prompt was held out (only answers that are not
  short, templated labels count, since those are expected to repeat).
"""

from __future__ import annotations

from collections import Counter

from tunesmith.artifacts import Generalisation, LogEntry, Memorisation, Prediction, TopConfusion, WorstExample
from tunesmith.evaluate.metrics import field_value, normalise, parse_json_object

MEMORISATION_MIN_CHARS = 40


def error_class(prediction: str, reference: str, correct: bool, max_new_tokens_hit: bool,
                label_field: str | None) -> str:
    if correct:
        return "correct"
    if not prediction.strip():
        return "empty"
    if max_new_tokens_hit:
        return "truncated"
    expects_json = parse_json_object(reference) is not None
    if expects_json and parse_json_object(prediction) is None:
        return "format_error"
    if normalise(reference) in normalise(prediction):
        return "extra_text"
    labelled = label_field is not None or not expects_json
    if labelled and field_value(prediction, label_field) != field_value(reference, label_field):
        return "wrong_label"
    return "wrong_answer"


def worst_examples(rows: list[Prediction], count: int = 5) -> list[WorstExample]:
    """The lowest-scoring fine-tuned answers of a set (first in set order on ties)."""
    ranked = sorted(rows, key=lambda r: (r.finetuned_score or 0.0, r.index))
    return [WorstExample.model_validate(r.model_dump()) for r in ranked[:count]]


def top_confusions(labels: list[str], matrix: list[list[int]], count: int = 5) -> list[TopConfusion]:
    pairs = [(matrix[i][j], labels[i], labels[j]) for i in range(len(matrix))
             for j in range(len(matrix[i])) if i != j and matrix[i][j]]
    return [TopConfusion(expected=e, predicted=p, count=n) for n, e, p in sorted(pairs, reverse=True)[:count]]


def loss_curves(log: list[LogEntry]) -> Generalisation:
    train = [(e.step, e.loss) for e in log if e.loss is not None]
    val = [(e.step, e.eval_loss) for e in log if e.eval_loss is not None]
    out = Generalisation(train=train, val=val)
    if train and val:
        recent = [loss for _, loss in train[-3:]]
        out.final_train_loss = sum(recent) / len(recent)
        out.final_val_loss = val[-1][1]
        out.gap = out.final_val_loss - out.final_train_loss
    return out


def memorisation_rate(predictions: list[str], train_answers: list[str]) -> Memorisation:
    """Share of generations that equal a (long, non-templated) training answer verbatim."""
    counts = Counter(normalise(a) for a in train_answers)
    distinctive = {a for a, n in counts.items() if n == 1 and len(a) >= MEMORISATION_MIN_CHARS}
    checked = [normalise(p) for p in predictions if len(normalise(p)) >= MEMORISATION_MIN_CHARS]
    copied = sum(1 for p in checked if p in distinctive)
    return Memorisation(checked=len(checked), verbatim_train_answers=copied,
                        rate=copied / len(checked) if checked else 0.0, min_chars=MEMORISATION_MIN_CHARS)
