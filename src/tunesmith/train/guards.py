"""Overfitting guards that do not depend on the training backend: they see losses, not a Trainer.

`OverfittingGuards(cfg)` is told each train loss and each validation loss; it raises the
train/validation gap alarm (`train.max_val_train_gap`) and decides early stopping
(`train.early_stopping`). Every firing is kept in `events` (train/summary.json, the report).
`l1_penalty` is the L1 term (`train.l1` times it is added to the training loss).
"""

from __future__ import annotations

from typing import Any

from tunesmith.artifacts import GuardEvent
from tunesmith.console import note, warn
from tunesmith.recipe import TrainConfig


class OverfittingGuards:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.events: list[GuardEvent] = []
        self.best: float | None = None
        self.checks_without_improvement = 0
        self.last_train_loss: float | None = None

    def train_loss(self, loss: float) -> None:
        self.last_train_loss = loss

    def validation_loss(self, step: int, val: float) -> bool:
        """Record a validation loss; True when training should stop (early stopping)."""
        self._gap_alarm(step, val)
        patience = self.cfg.early_stopping.patience
        if patience is None:
            return False
        if self.best is None or val < self.best - self.cfg.early_stopping.min_delta:
            self.best, self.checks_without_improvement = val, 0
            return False
        self.checks_without_improvement += 1
        if self.checks_without_improvement < patience:
            return False
        message = (f"early stopping at step {step}: validation loss {val:.4f} has not "
                   f"improved on {self.best:.4f} for {patience} checks")
        self.events.append(GuardEvent(guard="early_stopping", step=step, message=message))
        note(message)
        return True

    def _gap_alarm(self, step: int, val: float) -> None:
        gap_limit, train = self.cfg.max_val_train_gap, self.last_train_loss
        if gap_limit is None or train is None or val - train <= gap_limit:
            return
        message = (f"validation loss {val:.4f} exceeds train loss {train:.4f} by {val - train:.4f} > "
                   f"train.max_val_train_gap {gap_limit} at step {step}: overfitting (or an unstable run, "
                   "if the train loss is high as well).")
        self.events.append(GuardEvent(guard="gap_alarm", step=step, message=message))
        warn(message)


def l1_penalty(model: Any) -> Any:
    """sum |w| over the trainable weights (train.l1 times this is added to the loss; Trainer
    offers L2 as weight_decay but no L1)."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
