"""The training backend interface: what the train stage hands to an engine, and what it gets back.

The train stage does what every backend shares (tokenize, load and wrap the model, seed, the
run directory, the summary); a backend only runs the optimisation loop (trainer.BACKENDS lists
them, trainer.py holds the Trainer glue they share). Another engine implements the same `fit`,
and the guards, the log and the tune stage's pruning work with it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunesmith.artifacts import TrainProgress
from tunesmith.models.families import Family
from tunesmith.recipe import Recipe
from tunesmith.train.guards import OverfittingGuards


@dataclass
class TrainJob:
    recipe: Recipe
    model: Any
    """The model to train, on its device, already wrapped (LoRA) if the recipe says so."""
    tokenizer: Any
    family: Family
    train_set: Any
    """A `datasets.Dataset`: input_ids + assistant_masks (loss only where the mask is 1) for
    generating families, input_ids + labels (class index) for a classifier, preference rows."""
    val_set: Any | None
    device: str
    precision: str
    """Mixed precision: bf16, fp16 or no (`models.device.mixed_precision`)."""
    checkpoints: Path
    """Where checkpoints go (every train.save_steps), in the run's work area."""
    resume_from: Path | None
    log_path: Path
    """train/log.jsonl in progress: one `artifacts.LogEntry` a log or an evaluation."""
    guards: OverfittingGuards
    on_eval_loss: Callable[[int, int, float], bool] | None = None
    """After each validation: (step, max steps, loss) -> stop now (the tune stage's pruning)."""
    class_weights: list[float] | None = None
    """A classifier's loss weight per label (data.balance.strategy: class_weights), index order."""
    tracking: Any = None
    """The run's experiment trackers (tunesmith.track.Tracking; empty: none), on the first process."""


@dataclass
class Fitted:
    model: Any
    """The trained model (with its adapter), ready to save."""
    progress: TrainProgress
    state_dict: dict[str, Any] | None = None
    """A sharded model's weights (FSDP / ZeRO-3), gathered onto rank 0 (train.sharding.gathered):
    what rank 0 saves instead of its own shard. None when the model holds its whole weights."""


class Backend(Protocol):
    name: str

    def fit(self, job: TrainJob) -> Fitted:
        """Train `job.model` on `job.train_set`; checkpoint, log and consult the guards as it goes."""
        ...
