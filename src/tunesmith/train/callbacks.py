"""The TRL/Trainer side of training: callbacks that adapt the backend-independent pieces.

Imported only when training starts (it imports transformers), so the CLI stays quick.
    ProgressLog      progress bar (or plain lines in logs), tokens/s, and train/log.jsonl
    GuardsCallback   feeds losses to `guards.OverfittingGuards`, stops training when it says so
    EvalLossHook     hands each validation loss to a function (the tune stage's pruning)
    TrackerLog       every log, with throughput and memory, to the run's experiment trackers
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from tunesmith.artifacts import LogEntry
from tunesmith.interrupts import check
from tunesmith.models.device import peak_memory
from tunesmith.train.guards import OverfittingGuards


class ProgressLog(TrainerCallback):
    """Progress bar with loss, tokens/s and ETA; also appends every log to log.jsonl. In a
    distributed run only the first process shows and writes (Trainer gathers what it logs)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.start_time, self.start_tokens = time.time(), 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.start_time = time.time()
        self.start_tokens = state.num_input_tokens_seen
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
        if not state.is_world_process_zero:
            return
        self.progress.update(self.task, completed=state.global_step,
                             tps=f"{self.tokens_per_second(state):.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(LogEntry.model_validate(entry).model_dump_json(exclude_none=True) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress.stop()


class GuardsCallback(TrainerCallback):
    def __init__(self, guards: OverfittingGuards) -> None:
        self.guards = guards

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.guards.train_loss(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get("eval_loss")
        if value is not None and self.guards.validation_loss(state.global_step, value):
            control.should_training_stop = True


class EvalLossHook(TrainerCallback):
    """`hook(step, max_steps, eval_loss)` after every validation; training stops when it returns True."""

    def __init__(self, hook: Callable[[int, int, float], bool]) -> None:
        self.hook = hook

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get("eval_loss")
        if value is not None and self.hook(state.global_step, state.max_steps, value):
            control.should_training_stop = True


class Interrupts(TrainerCallback):
    """Between steps and evaluation batches: a Ctrl-C / SIGTERM that Python lost (it landed in a
    finalizer; see tunesmith.interrupts) stops training here."""

    def _check(self, *args: object, **kwargs: object) -> None:
        check()

    on_step_begin = on_step_end = on_substep_end = on_prediction_step = _check


class TrackerLog(TrainerCallback):
    """Every log (train loss, learning rate, gradient norm, validation loss) with tokens/s and peak
    memory to `train.report_to`'s trackers (tunesmith.track), at its optimizer step."""

    def __init__(self, tracking: Any, progress: ProgressLog, device: str) -> None:
        self.tracking, self.progress, self.device = tracking, progress, device

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        values = {(f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"): float(value)
                  for key, value in logs.items()
                  if isinstance(value, int | float) and not isinstance(value, bool)}
        values["train/tokens_per_second"] = self.progress.tokens_per_second(state)
        memory = peak_memory(self.device)
        if memory is not None:
            values["train/peak_memory_gib"] = memory / 2**30
        self.tracking.metrics(values, state.global_step)
