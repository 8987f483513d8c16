"""The train stage: supervised fine-tuning with TRL's SFTTrainer and PEFT LoRA, used as-is.

    tunesmith train recipes/demo.yaml [--resume] [train.lr=1e-4 ...]

`run(recipe, run_dir, resume=False)` tokenizes the prepared splits (loss on assistant turns
by default), wraps the base model in LoRA (or trains it fully), and trains with checkpoints
every `train.save_steps`. `resume=True` continues from the newest complete checkpoint, so a
run killed with `kill -9` finishes with the same total steps. Writes the adapter (or full
weights) and tokenizer to `model/`, `train/log.jsonl` and `train/summary.json`.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
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


def l1_penalised_loss(model: Any, coefficient: float):
    """A `compute_loss_func`: the usual token cross-entropy plus coefficient x sum |w| of the
    trainable weights (an L1 penalty that Trainer does not offer). It costs TRL one extra
    no-grad forward per step for its token metrics, so it is only used when train.l1 > 0."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, 1:].to(logits.device)
        total = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum")
        count = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
        penalty = sum(p.abs().sum() for p in params)
        return total / torch.as_tensor(count, device=logits.device).clamp(min=1) + coefficient * penalty

    return loss


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """Newest checkpoint whose trainer_state.json exists (Trainer writes it last); a checkpoint
    cut short by a crash is removed so that Trainer neither resumes from nor rotates it."""
    found = []
    for path in checkpoints.glob("checkpoint-*"):
        if (path / "trainer_state.json").exists():
            found.append((int(path.name.split("-")[-1]), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def check_resumable(recipe: Recipe, run_dir: RunDir, resume: bool) -> None:
    """`--resume` needs an interrupted training of the same recipe: say so before any work."""
    if not resume:
        return
    from tunesmith.rundir import STAGE_KEYS, differences

    state = run_dir.checkpoints / "recipe.json"
    if last_complete_checkpoint(run_dir.checkpoints) is None or not state.exists():
        raise ConfigError(f"{run_dir.root}: nothing to resume (no checkpoint of an interrupted training "
                          f"in {run_dir.checkpoints}). Train without --resume.")
    changed = differences(json.loads(state.read_text()), recipe.model_dump(mode="json"),
                          STAGE_KEYS["train"])
    if changed:
        raise ConfigError(f"{run_dir.root}: the interrupted training used other recipe values "
                          f"({'; '.join(changed[:3])}). Resume with the same recipe, or train from "
                          "scratch without --resume.")


def _trim_log(log: Path, after_step: int) -> None:
    """On resume, drop log lines past the checkpoint: those steps are run again."""
    if not log.exists():
        return
    lines = [line for line in log.read_text().splitlines()
             if line.strip() and json.loads(line).get("step", 0) <= after_step]
    log.write_text("".join(line + "\n" for line in lines))


def _guard_callback(recipe: Recipe, events: list[dict[str, Any]]) -> Any:
    """Early stopping on validation loss and the train/validation gap alarm; every firing is
    appended to `events` (and so to train/summary.json and the report)."""
    from transformers import TrainerCallback

    cfg = recipe.train
    from tunesmith.console import note, warn

    class OverfittingGuards(TrainerCallback):
        best: float | None = None
        checks_without_improvement = 0
        last_train_loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_train_loss = logs["loss"]

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            val = (metrics or {}).get("eval_loss")
            if val is None:
                return
            if (cfg.max_val_train_gap is not None and self.last_train_loss is not None
                    and val - self.last_train_loss > cfg.max_val_train_gap):
                message = (f"validation loss {val:.4f} exceeds train loss {self.last_train_loss:.4f} "
                           f"by {val - self.last_train_loss:.4f} > train.max_val_train_gap "
                           f"{cfg.max_val_train_gap} at step {state.global_step}: overfitting "
                           "(or an unstable run, if the train loss is high as well).")
                events.append({"guard": "gap_alarm", "step": state.global_step, "message": message})
                warn(message)
            patience = cfg.early_stopping.patience
            if patience is None:
                return
            if self.best is None or val < self.best - cfg.early_stopping.min_delta:
                self.best, self.checks_without_improvement = val, 0
                return
            self.checks_without_improvement += 1
            if self.checks_without_improvement >= patience:
                control.should_training_stop = True
                message = (f"early stopping at step {state.global_step}: validation loss {val:.4f} has not "
                           f"improved on {self.best:.4f} for {patience} checks")
                events.append({"guard": "early_stopping", "step": state.global_step, "message": message})
                note(message)

    return OverfittingGuards()


def _callbacks(log_path: Path) -> list[Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        """Progress bar with loss, tokens/s and ETA; also appends every log to log.jsonl."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_time = time.time()
            self.start_tokens = state.num_input_tokens_seen
            self.start_step = state.global_step
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps,
                                               completed=state.global_step, loss="-", tps="-")

        def tokens_per_second(self, state) -> float:
            elapsed = max(time.time() - self.start_time, 1e-9)
            return (state.num_input_tokens_seen - self.start_tokens) / elapsed

        def on_step_end(self, args, state, control, **kwargs):
            self.progress.update(self.task, completed=state.global_step,
                                 tps=f"{self.tokens_per_second(state):.0f}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "loss" in logs:
                self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
                if not self.progress.console.is_terminal:  # no live bar in logs: print a line
                    self.progress.console.print(
                        f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                        f"{self.tokens_per_second(state):.0f} tok/s", highlight=False)
            entry = {"step": state.global_step, "epoch": state.epoch, **logs,
                     "tokens_seen": state.num_input_tokens_seen,
                     "tokens_per_second": self.tokens_per_second(state), "time": time.time()}
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            self.progress.stop()

    return [RichProgress()]


def run(recipe: Recipe, run_dir: RunDir, resume: bool = False, extra_callbacks: tuple = (),
        splits: dict[str, list[dict]] | None = None) -> TrainResult:
    """Train; `extra_callbacks` (e.g. the tune stage's pruning) and `splits` (e.g. a CV fold)
    let other stages reuse the same training path."""
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
        _trim_log(log_in_progress, int(checkpoint.name.split("-")[-1]))
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
    guard_events: list[dict[str, Any]] = []
    callbacks = [*_callbacks(log_in_progress), _guard_callback(recipe, guard_events), *extra_callbacks]
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                         processing_class=tokenizer, callbacks=callbacks,
                         compute_loss_func=l1_penalised_loss(model, cfg.l1) if cfg.l1 > 0 else None)
    trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its prints
    started = time.time()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.time() - started
    state = trainer.state
    progress = next(c for c in trainer.callback_handler.callbacks if hasattr(c, "tokens_per_second"))
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
        "guards": guard_events,
        "final_eval_loss": next((e["eval_loss"] for e in reversed(state.log_history) if "eval_loss" in e),
                                None),
    }
    write_json(run_dir.train_summary, summary)
    return TrainResult(run_dir.model, state.global_step, output.training_loss,
                       tokens_per_second, runtime, summary["final_eval_loss"], guard_events)
