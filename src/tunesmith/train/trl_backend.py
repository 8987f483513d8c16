"""The TRL backend: TRL's SFTTrainer, used as-is, with tunesmith's callbacks for the progress
bar and log.jsonl, the overfitting guards and the eval-loss hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl import SFTConfig, SFTTrainer

from tunesmith.artifacts import TrainProgress
from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.guards import l1_penalty

OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "rmsprop": "rmsprop"}
"""Recipe optimizer names -> transformers `optim` names."""


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


def trainer_args(job: TrainJob) -> dict[str, Any]:
    """The TrainingArguments every TRL trainer here shares (SFT, DPO, KTO)."""
    cfg = job.recipe.train
    evaluate = job.val_set is not None
    return dict(
        output_dir=str(job.checkpoints),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler, optim=OPTIMIZERS[cfg.optimizer], max_length=cfg.max_length,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=job.precision == "bf16", fp16=job.precision == "fp16", use_cpu=job.device == "cpu",
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if evaluate else "no",
        eval_steps=cfg.eval_steps, seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=True,
    )


def sft_config(job: TrainJob) -> Any:
    cfg = job.recipe.train
    return SFTConfig(**trainer_args(job), include_num_input_tokens_seen="non_padding",
                     train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")


def fitted(trainer: Any, output: Any, progress: Any) -> Fitted:
    """The trained model and its progress, as the stage records them."""
    state = trainer.state
    final_eval = next((e["eval_loss"] for e in reversed(state.log_history) if "eval_loss" in e), None)
    return Fitted(trainer.model, TrainProgress(
        steps=state.global_step, max_steps=state.max_steps, epochs=state.epoch,
        train_loss=output.training_loss, tokens_seen=state.num_input_tokens_seen,
        tokens_per_second=progress.tokens_per_second(state), final_eval_loss=final_eval))


def callbacks(job: TrainJob) -> tuple[list[Any], Any]:
    """tunesmith's callbacks (progress bar + log.jsonl, guards, the tune stage's hook) and the log."""
    from tunesmith.train.callbacks import EvalLossHook, GuardsCallback, ProgressLog

    progress = ProgressLog(job.log_path)
    hooks = [progress, GuardsCallback(job.guards)]
    if job.on_eval_loss:
        hooks.append(EvalLossHook(job.on_eval_loss))
    return hooks, progress


@dataclass
class TRLBackend:
    name: str = "trl"

    def fit(self, job: TrainJob) -> Fitted:
        from transformers import PrinterCallback

        hooks, progress = callbacks(job)
        trainer = L1SFTTrainer(model=job.model, args=sft_config(job), train_dataset=job.train_set,
                               eval_dataset=job.val_set, processing_class=job.tokenizer, callbacks=hooks,
                               l1=job.recipe.train.l1)
        trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its prints
        output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        return fitted(trainer, output, progress)
