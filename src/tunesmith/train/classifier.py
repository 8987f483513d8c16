"""Encoder training (`model.family: encoder`): transformers' Trainer on a sequence-classification
head, LoRA (PEFT's SEQ_CLS task: the head is trained and saved with the adapter) or full, with
tunesmith's callbacks, checkpoints and guards like every other backend.

`data.balance.strategy: class_weights` is applied here, in the loss: class c weighs
n / (classes x n_c) over the training split (the data stage's report shows the same numbers), so
a rare category costs as much, in total, as a common one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from transformers import Trainer

from tunesmith.files import write_json
from tunesmith.models.classifier import LABELS_FILE, example, label_names
from tunesmith.recipe import Recipe
from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.guards import l1_penalty
from tunesmith.train.trl_backend import callbacks, fitted, trainer_args


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


class WeightedTrainer(Trainer):
    """Trainer whose training loss is the class-weighted cross-entropy (+ train.l1 x sum |w|);
    the validation loss stays the plain cross-entropy, comparable across runs."""

    def __init__(self, *args: Any, weights: list[float] | None = None, l1: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weights, self.l1 = weights, l1

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        import torch

        if not model.training or (self.weights is None and self.l1 <= 0):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = torch.tensor(self.weights, device=outputs.logits.device) if self.weights else None
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight)
        if self.l1 > 0:
            loss = loss + self.l1 * l1_penalty(model)
        return (loss, outputs) if return_outputs else loss


@dataclass
class ClassifierBackend:
    name: str = "transformers-classifier"
    weights: list[float] | None = None

    def fit(self, job: TrainJob) -> Fitted:
        from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

        hooks, progress = callbacks(job)
        args = {k: v for k, v in trainer_args(job).items() if k != "max_length"}
        trainer = WeightedTrainer(
            model=job.model, args=TrainingArguments(**args, include_num_input_tokens_seen="non_padding"),
            train_dataset=job.train_set, eval_dataset=job.val_set, processing_class=job.tokenizer,
            data_collator=DataCollatorWithPadding(job.tokenizer), callbacks=hooks,
            weights=self.weights, l1=job.recipe.train.l1)
        trainer.remove_callback(PrinterCallback)
        output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        return fitted(trainer, output, progress)
