"""The train stage: supervised fine-tuning with TRL's SFTTrainer and PEFT LoRA, used as-is.

    tunesmith train recipes/demo.yaml [--resume] [train.lr=1e-4 ...]

`run(recipe, run_dir, resume=False)` tokenizes the prepared splits (loss on assistant turns
by default), wraps the base model in LoRA (or trains it fully), and trains with checkpoints
every `train.save_steps`. `resume=True` continues from the newest complete checkpoint, so a
run killed with `kill -9` finishes with the same total steps. Writes the adapter (or full
weights) and tokenizer to `model/`, `train/log.jsonl` and `train/summary.json`.

    guards.py       overfitting guards, independent of the backend (they see losses only)
    callbacks.py    the Trainer side: progress and log.jsonl, guards, the eval-loss hook
    checkpoints.py  which checkpoint to resume from, and whether a resume is possible
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data import load_splits
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.chat import tokenize_record
from tunesmith.models.device import mixed_precision, resolve_device
from tunesmith.models.loading import load_model, load_tokenizer, model_location
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, write_json
from tunesmith.train.checkpoints import check_resumable, last_complete_checkpoint, trim_log
from tunesmith.train.guards import OverfittingGuards, l1_penalised_loss

__all__ = ["TrainResult", "check_resumable", "run", "tokenized_dataset"]

OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "rmsprop": "rmsprop"}


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    train_loss: float | None
    tokens_per_second: float
    runtime_seconds: float
    final_eval_loss: float | None = None
    guards: list[dict[str, Any]] | None = None


def tokenized_dataset(tokenizer: Any, records: list[dict], recipe: Recipe) -> Any:
    """A `datasets.Dataset` of input_ids + assistant_masks; rows with nothing to learn dropped."""
    import datasets

    rows = [tokenize_record(tokenizer, r, recipe.train.loss_on, recipe.train.max_length,
                            recipe.data.system_prompt) for r in records]
    kept = [row for row in rows if any(row["assistant_masks"])]
    if not kept:
        raise DataError(
            f"no example keeps an answer token within train.max_length={recipe.train.max_length}; "
            "raise train.max_length."
        )
    return datasets.Dataset.from_list(kept)


def _wrap_lora(model: Any, recipe: Recipe) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    lora = recipe.train.lora
    if lora.targets != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear)}
        unknown = [t for t in lora.targets if t not in names]
        if unknown:
            raise ConfigError(
                f"train.lora.targets: {', '.join(unknown)} matches no linear layer of {recipe.model.name}. "
                f"Its linear layers are: {', '.join(sorted(names))}; or use all-linear.")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def run(recipe: Recipe, run_dir: RunDir, resume: bool = False,
        on_eval_loss: Callable[[int, int, float], bool] | None = None,
        splits: dict[str, list[dict]] | None = None) -> TrainResult:
    """Train; `on_eval_loss(step, max_steps, loss)` (the tune stage's pruning; True stops) and
    `splits` (e.g. a CV fold) let other stages reuse the same training path."""
    import datasets
    import transformers
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    splits = splits if splits is not None else load_splits(run_dir)
    cfg = recipe.train
    location = model_location(recipe.model)
    device = resolve_device(recipe.model)
    tokenizer = load_tokenizer(recipe.model, location)
    train_set = tokenized_dataset(tokenizer, splits["train"], recipe)
    val_set = tokenized_dataset(tokenizer, splits["val"], recipe) if splits.get("val") else None

    # seed before the adapter's random initialisation, not only in Trainer: a run's result must not
    # depend on what ran before it in the process (a tune trial replayed from best.yaml, say)
    transformers.set_seed(cfg.seed)
    model = load_model(recipe.model, location, device, dropout=cfg.model_dropout)
    if cfg.method == "lora":
        model = _wrap_lora(model, recipe)

    # checkpoints and the log in progress live in the run's work area, which survives a failed
    # or interrupted command (for --resume); model/ and train/ are written to the staging view
    checkpoint = last_complete_checkpoint(run_dir.checkpoints) if resume else None
    if not resume and run_dir.checkpoints.exists():
        shutil.rmtree(run_dir.checkpoints)  # a fresh run must not resume someone's old state
    log_in_progress = run_dir.checkpoints / "log.jsonl"
    if checkpoint is not None:
        trim_log(log_in_progress, int(checkpoint.name.split("-")[-1]))
    run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.checkpoints / "recipe.json", recipe.model_dump(mode="json"))

    precision = mixed_precision(recipe, device)
    args = SFTConfig(
        output_dir=str(run_dir.checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler,
        optim=OPTIMIZERS[cfg.optimizer],
        max_length=cfg.max_length,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if val_set is not None else "no",
        eval_steps=cfg.eval_steps,
        include_num_input_tokens_seen="non_padding",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
    )
    from tunesmith.train.callbacks import EvalLossHook, GuardsCallback, ProgressLog

    guards, progress = OverfittingGuards(cfg), ProgressLog(log_in_progress)
    callbacks = [progress, GuardsCallback(guards)] + ([EvalLossHook(on_eval_loss)] if on_eval_loss else [])
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                         processing_class=tokenizer, callbacks=callbacks,
                         compute_loss_func=l1_penalised_loss(model, cfg.l1) if cfg.l1 > 0 else None)
    trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its prints
    started = time.time()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.time() - started
    state = trainer.state
    tokens_per_second = progress.tokens_per_second(state)

    if run_dir.model.exists():
        shutil.rmtree(run_dir.model)
    run_dir.train_log.parent.mkdir(parents=True, exist_ok=True)
    if log_in_progress.exists():
        shutil.copyfile(log_in_progress, run_dir.train_log)
    trainer.save_model(str(run_dir.model))
    tokenizer.save_pretrained(str(run_dir.model))
    (run_dir.model / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe says it all
    if cfg.merge and cfg.method == "lora":
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(run_dir.model / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(run_dir.model / "merged"))

    summary = {
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "train_loss": output.training_loss,
        "tokens_seen": state.num_input_tokens_seen,
        "tokens_per_second": tokens_per_second,
        "runtime_seconds": runtime,
        "resumed_from": checkpoint.name if checkpoint else None,
        "device": device,
        "mixed_precision": precision,
        "method": cfg.method,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "train_examples": len(train_set),
        "val_examples": len(val_set) if val_set is not None else 0,
        "guards": guards.events,
        "final_eval_loss": next((e["eval_loss"] for e in reversed(state.log_history) if "eval_loss" in e),
                                None),
    }
    write_json(run_dir.train_summary, summary)
    return TrainResult(run_dir.model, state.global_step, output.training_loss,
                       tokens_per_second, runtime, summary["final_eval_loss"], guards.events)
