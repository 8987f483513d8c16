"""Encoder training data (`model.family: encoder`): (text, label index) rows for a
sequence-classification head, LoRA (PEFT's SEQ_CLS task: the head is trained and saved with the
adapter) or full; trained by `hf_backend.TrainerBackend`.

`data.balance.strategy: class_weights` is applied here, in the loss: class c weighs
n / (classes x n_c) over the training split (the data stage's report shows the same numbers), so
a rare category costs as much, in total, as a common one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunesmith.files import write_json
from tunesmith.models.classifier import LABELS_FILE, example, label_names
from tunesmith.recipe import Recipe


def labels_for(records: list[dict], recipe: Recipe) -> list[str]:
    return label_names(records, recipe.eval.label_field)


def classification_dataset(tokenizer: Any, records: list[dict], recipe: Recipe, labels: list[str]) -> Any:
    """input_ids / attention_mask / labels (the class index); labels unseen in training dropped."""
    import datasets

    index = {name: i for i, name in enumerate(labels)}
    pairs = [example(r, recipe.eval.label_field) for r in records]
    kept = [(text, index[label]) for text, label in pairs if label in index]
    encoded = tokenizer([t for t, _ in kept], truncation=True, max_length=recipe.train.max_length)
    return datasets.Dataset.from_dict({**encoded, "labels": [i for _, i in kept]})


def class_weights(records: list[dict], recipe: Recipe, labels: list[str]) -> list[float] | None:
    """Per class n / (classes x n_c) when the recipe asks for class weights, else None."""
    if recipe.data.balance.strategy != "class_weights":
        return None
    counts = Counter(example(r, recipe.eval.label_field)[1] for r in records)
    total = sum(counts[name] for name in labels)
    return [total / (len(labels) * counts[name]) if counts[name] else 0.0 for name in labels]


def save_labels(model_dir: Any, labels: list[str], weights: list[float] | None) -> None:
    write_json(model_dir / LABELS_FILE, {"labels": labels, "class_weights": weights})
