"""The transformers backend: transformers' own Trainer, for the families TRL's SFTTrainer is not
made for: encoder classifiers (a class-weighted loss) and encoder-decoders (labels are the
answer's tokens, padded with -100 by DataCollatorForSeq2Seq). tunesmith's callbacks, checkpoints
and guards work with it as with the TRL backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import Trainer

from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.guards import l1_penalty
from tunesmith.train.trainer import callbacks, train, trainer_args


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
class TrainerBackend:
    name: str = "transformers"

    def fit(self, job: TrainJob) -> Fitted:
        from transformers import (
            DataCollatorForSeq2Seq,
            DataCollatorWithPadding,
            TrainingArguments,
        )

        hooks, progress = callbacks(job)
        trainer = WeightedTrainer(
            model=job.model,
            args=TrainingArguments(**trainer_args(job), include_num_input_tokens_seen="non_padding"),
            train_dataset=job.train_set, eval_dataset=job.val_set, processing_class=job.tokenizer,
            data_collator=(DataCollatorWithPadding(job.tokenizer) if not job.family.generates
                           else DataCollatorForSeq2Seq(job.tokenizer, model=job.model)),
            callbacks=hooks, weights=job.class_weights, l1=job.recipe.train.l1)
        return train(trainer, job, progress)
