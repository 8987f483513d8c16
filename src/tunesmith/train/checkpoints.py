"""Resumable checkpoints: which one to resume from, whether a resume is possible, and the log.

Checkpoints live in the run's work area (`runs/<run>/.work/checkpoints/`), which survives a
failed or interrupted command, with the recipe that made them (`recipe.json`) and the log in
progress (`log.jsonl`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.recipe import Recipe
from tunesmith.rundir import STAGE_KEYS, RunDir, differences


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
    state = run_dir.checkpoint_recipe
    if last_complete_checkpoint(run_dir.checkpoints) is None or not state.exists():
        raise ConfigError(f"{run_dir.root}: nothing to resume (no checkpoint of an interrupted training "
                          f"in {run_dir.checkpoints}). Train without --resume.")
    changed = differences(json.loads(state.read_text()), recipe.model_dump(mode="json"),
                          STAGE_KEYS["train"])
    if changed:
        raise ConfigError(f"{run_dir.root}: the interrupted training used other recipe values "
                          f"({'; '.join(changed[:3])}). Resume with the same recipe, or train from "
                          "scratch without --resume.")


def trim_log(log: Path, after_step: int) -> None:
    """On resume, drop log lines past the checkpoint: those steps are run again."""
    if not log.exists():
        return
    lines = [line for line in log.read_text().splitlines()
             if line.strip() and json.loads(line).get("step", 0) <= after_step]
    log.write_text("".join(line + "\n" for line in lines))
