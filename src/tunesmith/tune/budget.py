"""The compute budget of a study: optimizer steps over all trials and workers."""

from __future__ import annotations

from typing import Any


def steps_used(study: Any) -> int:
    """Optimizer steps of every finished trial in the study (all workers; pruned trials included)."""
    return sum(t.user_attrs.get("steps", 0) for t in study.get_trials(deepcopy=False))


class StepBudget:
    """tune.max_training_steps: start a trial only while a full-length one still fits.

    A full-length trial is the longest any trial has run so far, or train.max_steps before the first.
    """

    def __init__(self, limit: int | None, max_steps: int | None):
        self.limit, self.max_steps = limit, max_steps

    def fits(self, study: Any) -> bool:
        if self.limit is None:
            return True
        longest = max([t.user_attrs.get("steps", 0) for t in study.get_trials(deepcopy=False)]
                      + [self.max_steps or 0])
        return steps_used(study) + longest <= self.limit

    def __call__(self, study: Any, trial: Any) -> None:
        if not self.fits(study):
            study.stop()
