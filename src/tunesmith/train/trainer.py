"""The Trainer glue every backend shares: transformers' TrainingArguments from a recipe, the
optimizers, tunesmith's callbacks, the fitted result, and the table of backends.

A backend (backend.py) only runs the optimisation loop; what it hands to transformers' Trainer
(or to one of TRL's trainers, which take the same arguments) is made here, once, so that a new
method, QLoRA or packing lands in one place, and the default backend never imports TRL.

    trainer_args(job)   the TrainingArguments keywords every backend shares
    callbacks(job)      progress bar + log.jsonl, the overfitting guards, the tune stage's hook
    fitted(...)         the trained model and its progress, as the stage records them
    backend_for(job)    which backend trains a job (BACKENDS)
"""

from __future__ import annotations

import importlib
from typing import Any

from tunesmith.artifacts import TrainProgress
from tunesmith.train.backend import Backend, Fitted, TrainJob
from tunesmith.train.sharding import machines

OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "rmsprop": "rmsprop"}
"""Recipe optimizer names -> transformers `optim` names."""

BACKENDS = {
    "tunesmith": ("tunesmith.train.sft_backend", "SFTBackend"),
    "trl": ("tunesmith.train.trl_backend", "TRLBackend"),
    "preference": ("tunesmith.train.preference", "PreferenceBackend"),
    "grpo": ("tunesmith.train.grpo", "GRPOBackend"),
    "transformers": ("tunesmith.train.hf_backend", "TrainerBackend"),
}
"""Backend name -> (module, class); imported only when chosen, so the default path never loads
TRL. lora, qlora and full train on the same backends: QLoRA differs in how the model is loaded
(models.loading), packing in the rows (train.packing), neither in the loop."""


def backend_name(job: TrainJob) -> str:
    """dpo / kto: TRL's preference trainers; grpo: TRL's GRPOTrainer; encoders and encoder-decoders:
    transformers' Trainer; decoders: train.backend (tunesmith's SFT loop by default, or TRL's
    SFTTrainer)."""
    if job.recipe.train.preference:
        return "preference"
    if job.recipe.train.method == "grpo":
        return "grpo"
    if job.family.name != "causal_lm":  # TRL's SFTTrainer and the answer-only loss are for decoders
        return "transformers"
    return job.recipe.train.backend


def backend_for(job: TrainJob) -> Backend:
    module, name = BACKENDS[backend_name(job)]
    return getattr(importlib.import_module(module), name)()


def trainer_args(job: TrainJob) -> dict[str, Any]:
    """The TrainingArguments keywords every backend shares (TRL's configs take them too; only
    TRL's take `max_length`, which its backends add)."""
    cfg = job.recipe.train
    evaluate = job.val_set is not None
    return dict(
        output_dir=str(job.checkpoints),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler, optim=OPTIMIZERS[cfg.optimizer],
        gradient_checkpointing=cfg.gradient_checkpointing,
        # the layers' inputs are kept, the rest recomputed; PEFT's k-bit preparation and LoRA need
        # the non-reentrant variant (the reentrant one loses the gradient of a frozen first layer)
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        bf16=job.precision == "bf16", fp16=job.precision == "fp16", use_cpu=job.device == "cpu",
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if evaluate else "no",
        eval_steps=cfg.eval_steps, seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=True,
        # DDP: every adapter weight gets a gradient each step, so the search for unused ones (a
        # second pass over the graph, and an error with checkpointing) is skipped
        ddp_find_unused_parameters=False if cfg.adapter == "lora" else None,
        # many machines: each keeps its ranks' checkpoint shards with their trainer state, so that
        # every machine's --resume finds a complete checkpoint
        save_on_each_node=machines() > 1,
    )


def fitted(trainer: Any, output: Any, progress: Any, adapter_only: bool = False) -> Fitted:
    """The trained model and its progress, as the stage records them; a sharded model's weights
    gathered onto rank 0 (every rank takes part; an adapter's trained weights only)."""
    from tunesmith.train.sharding import gathered

    state = trainer.state
    final_eval = next((e["eval_loss"] for e in reversed(state.log_history) if "eval_loss" in e), None)
    return Fitted(trainer.model, TrainProgress(
        steps=state.global_step, max_steps=state.max_steps, epochs=state.epoch,
        train_loss=output.training_loss, tokens_seen=state.num_input_tokens_seen,
        tokens_per_second=progress.tokens_per_second(state), final_eval_loss=final_eval),
        state_dict=gathered(trainer, adapter_only))


def callbacks(job: TrainJob) -> tuple[list[Any], Any]:
    """tunesmith's callbacks (progress bar + log.jsonl, guards, the live page, the tune stage's
    hook, the experiment trackers) and the log."""
    from tunesmith.train.callbacks import EvalLossHook, GuardsCallback, Interrupts, ProgressLog, TrackerLog
    from tunesmith.train.watch import PAGE, LivePage

    progress = ProgressLog(job.log_path)
    live = LivePage(job.checkpoints / PAGE, job.recipe.name, job.guards, progress, job.device)
    hooks = [progress, GuardsCallback(job.guards), Interrupts(), live]
    if job.on_eval_loss:
        hooks.append(EvalLossHook(job.on_eval_loss))
    if job.tracking:
        hooks.append(TrackerLog(job.tracking, progress, job.device))
    return hooks, progress


def train(trainer: Any, job: TrainJob, progress: Any) -> Fitted:
    """Run `trainer` (resuming from the job's checkpoint if any) with our progress bar instead of
    transformers' prints; the fitted result."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its prints
    output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    return fitted(trainer, output, progress, adapter_only=job.recipe.train.adapter == "lora")
