"""The TRL backend: TRL's SFTTrainer, used as-is, with tunesmith's callbacks for the progress
bar and log.jsonl, the overfitting guards and the eval-loss hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.artifacts import TrainProgress
from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.guards import l1_penalised_loss

OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "rmsprop": "rmsprop"}
"""Recipe optimizer names -> transformers `optim` names."""


def sft_config(job: TrainJob) -> Any:
    from trl import SFTConfig

    cfg = job.recipe.train
    evaluate = job.val_set is not None
    return SFTConfig(
        output_dir=str(job.checkpoints),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler, optim=OPTIMIZERS[cfg.optimizer], max_length=cfg.max_length,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=job.precision == "bf16", fp16=job.precision == "fp16", use_cpu=job.device == "cpu",
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if evaluate else "no",
        eval_steps=cfg.eval_steps,
        include_num_input_tokens_seen="non_padding", seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", disable_tqdm=True,
    )


@dataclass
class TRLBackend:
    name: str = "trl"

    def fit(self, job: TrainJob) -> Fitted:
        from transformers import PrinterCallback
        from trl import SFTTrainer

        from tunesmith.train.callbacks import EvalLossHook, GuardsCallback, ProgressLog

        l1 = job.recipe.train.l1
        progress = ProgressLog(job.log_path)
        callbacks = [progress, GuardsCallback(job.guards)]
        if job.on_eval_loss:
            callbacks.append(EvalLossHook(job.on_eval_loss))
        loss = l1_penalised_loss(job.model, l1, job.family) if l1 > 0 else None
        trainer = SFTTrainer(model=job.model, args=sft_config(job), train_dataset=job.train_set,
                             eval_dataset=job.val_set, processing_class=job.tokenizer, callbacks=callbacks,
                             compute_loss_func=loss)
        trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its prints
        output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        state = trainer.state
        final_eval = next((e["eval_loss"] for e in reversed(state.log_history) if "eval_loss" in e), None)
        return Fitted(trainer.model, TrainProgress(
            steps=state.global_step, max_steps=state.max_steps, epochs=state.epoch,
            train_loss=output.training_loss, tokens_seen=state.num_input_tokens_seen,
            tokens_per_second=progress.tokens_per_second(state), final_eval_loss=final_eval))
