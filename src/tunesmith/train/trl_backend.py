"""The TRL backend: TRL's SFTTrainer, used as-is, with tunesmith's callbacks for the progress
bar and log.jsonl, the overfitting guards and the eval-loss hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl import SFTConfig, SFTTrainer

from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.guards import l1_penalty
from tunesmith.train.trainer import callbacks, train, trainer_args


class L1SFTTrainer(SFTTrainer):
    """SFTTrainer whose training loss carries train.l1 x sum |w|. TRL's own loss and metrics are
    unchanged and there is no extra forward pass: the way TRL 1.x asks for a custom loss
    (`compute_loss_func` is deprecated and cost one more forward a step)."""

    def __init__(self, *args: Any, l1: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l1 = l1

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self.l1 <= 0 or not model.training:  # validation loss stays the plain token loss
            return result
        if return_outputs:
            return result[0] + self.l1 * l1_penalty(model), result[1]
        return result + self.l1 * l1_penalty(model)


def sft_config(job: TrainJob) -> Any:
    cfg = job.recipe.train
    return SFTConfig(**trainer_args(job), max_length=cfg.max_length,
                     include_num_input_tokens_seen="non_padding",
                     train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")


@dataclass
class TRLBackend:
    name: str = "trl"

    def fit(self, job: TrainJob) -> Fitted:
        hooks, progress = callbacks(job)
        trainer = L1SFTTrainer(model=job.model, args=sft_config(job), train_dataset=job.train_set,
                               eval_dataset=job.val_set, processing_class=job.tokenizer, callbacks=hooks,
                               l1=job.recipe.train.l1)
        return train(trainer, job, progress)
