"""The rows a backend trains on, built from the data stage's splits (records) for the recipe's
method and model family.

    tokenized_dataset   decoder SFT: input_ids + assistant_masks (loss on the answers), maybe packed
    seq2seq_dataset     encoder-decoder: the prompt's ids, the answer's tokens as labels
    training_sets       the train and validation sets for a recipe: those two, a classifier's rows
                        (classifier.py), preference rows (preference.py) or GRPO's prompts (grpo.py)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import DataError
from tunesmith.models.chat import training_rows
from tunesmith.models.families import Family
from tunesmith.recipe import Recipe


def tokenized_dataset(tokenizer: Any, records: list[dict], recipe: Recipe, pack: bool = False) -> Any:
    """A `datasets.Dataset` of input_ids + assistant_masks; rows with nothing to learn dropped;
    with `pack`, those rows packed into rows of up to train.max_length tokens (packing.py)."""
    import datasets

    rows = training_rows(tokenizer, records, recipe.train, recipe.data.system_prompt)
    if any(r.get("meta", {}).get("weight", 1.0) != 1.0 for r in records):  # data.bias.mitigate: reweight
        for row, record in zip(rows, records, strict=True):
            row["weight"] = float(record["meta"].get("weight", 1.0))
    kept = [row for row in rows if any(row["assistant_masks"])]
    if not kept:
        raise DataError(
            f"no example keeps an answer token within train.max_length={recipe.train.max_length}; "
            "raise train.max_length."
        )
    if pack:
        from tunesmith.train.packing import pack_rows

        kept = pack_rows(kept, recipe.train.max_length)
    return datasets.Dataset.from_list(kept)


def seq2seq_dataset(tokenizer: Any, records: list[dict], recipe: Recipe) -> Any:
    """An encoder-decoder's rows: the prompt's input_ids, the answer's tokens as labels."""
    import datasets

    from tunesmith.models.chat import prompt_and_reference
    from tunesmith.models.families.seq2seq import tokenize_pair

    system, limit = recipe.data.system_prompt, recipe.train.max_length
    rows = [tokenize_pair(tokenizer, *prompt_and_reference(r, system), limit) for r in records]
    return datasets.Dataset.from_list(rows)


@dataclass
class TrainingSets:
    train: Any
    val: Any | None
    head: dict[str, Any] = field(default_factory=dict)
    """A classifier's head: num_labels, id2label, label2id (empty for generating families)."""
    class_weights: list[float] | None = None
    """A classifier's loss weight per label (data.balance.strategy: class_weights)."""


def _builder(recipe: Recipe, tokenizer: Any, family: Family, splits: dict[str, list[dict]]
             ) -> tuple[Callable[[list[dict], Recipe], Any], dict[str, Any], list[str]]:
    """How records become rows for this recipe, with a classifier's head and labels."""
    if recipe.train.preference:
        from tunesmith.train.preference import preference_dataset

        return preference_dataset, {}, []
    if recipe.train.method == "grpo":
        from tunesmith.train.grpo import prompt_dataset

        return functools.partial(prompt_dataset, tokenizer), {}, []
    if not family.generates:  # a classifier: labels from the training split, index order
        from tunesmith.train.classifier import classification_dataset, labels_for

        labels = labels_for(splits["train"], recipe)
        head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)}}
        return functools.partial(classification_dataset, tokenizer, labels=labels), head, labels
    if family.name == "seq2seq":
        return functools.partial(seq2seq_dataset, tokenizer), {}, []
    return functools.partial(tokenized_dataset, tokenizer), {}, []


def training_sets(recipe: Recipe, tokenizer: Any, family: Family, splits: dict[str, list[dict]],
                  pack: bool) -> TrainingSets:
    """The train set (packed when `pack`) and the validation set (never packed: comparable; none
    for GRPO, whose validation would be sampling)."""
    dataset, head, labels = _builder(recipe, tokenizer, family, splits)
    weights = None
    if head:
        from tunesmith.train.classifier import class_weights

        weights = class_weights(splits["train"], recipe, labels)
    train_set = (tokenized_dataset(tokenizer, splits["train"], recipe, pack=True) if pack
                 else dataset(splits["train"], recipe))
    validates = splits.get("val") and recipe.train.method != "grpo"
    return TrainingSets(train_set, dataset(splits["val"], recipe) if validates else None, head, weights)
