"""`tunesmith tune RECIPE --processes N`: N tuning workers on this machine, sharing the study.

The launching process prepares the data and creates the study (SQLite in the run's work area, or
tune.storage); then N worker processes each run trials of it, each pinned to one device of
`tune.devices` (auto: every visible GPU, round robin; the CPU without one) through
CUDA_VISIBLE_DEVICES, so that no two trials share a GPU unless there are more workers than GPUs.
Each worker frees its memory between trials; a trial that runs out of memory (or that train.fit
refuses before loading) is recorded as failed with `failure: out_of_memory` and the fix, and the
study goes on. The launching process writes trials.csv, best.yaml and the summary once all are done.

    python -m tunesmith.tune.workers PAYLOAD.json      (what each worker runs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.models.device import pinned, visible_devices
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir


def devices(recipe: Recipe) -> list[str]:
    """tune.devices, with auto resolved: cuda:0..k-1 when GPUs are visible, else cpu."""
    return visible_devices() if recipe.tune.devices == "auto" else list(recipe.tune.devices)


def shares(trials: int | None, workers: int) -> list[int | None]:
    """The study's trials split over the workers (None: each runs until the timeout or budget)."""
    if trials is None:
        return [None] * workers
    return [trials // workers + (i < trials % workers) for i in range(workers)]


def run_workers(recipe: Recipe, view: RunDir, storage: str, study_name: str, trials: int | None,
                processes: int) -> None:
    """Start the workers, each on its device, and wait for all of them."""
    places = devices(recipe)
    with tempfile.TemporaryDirectory(prefix="tunesmith-tune-") as tmp:
        started = []
        for index, share in enumerate(shares(trials, processes)):
            if share == 0:
                continue
            payload = Path(tmp) / f"worker-{index}.json"
            payload.write_text(json.dumps({
                "recipe": recipe.model_dump(mode="json"), "root": str(view.root),
                "home": str(view.home) if view.home else None, "storage": storage,
                "study": study_name, "trials": share}))
            device = places[index % len(places)]
            env = {**os.environ, **pinned(device), "TUNESMITH_TUNE_DEVICE": device}
            from tunesmith.interrupts import die_with_parent

            started.append((device, subprocess.Popen(
                [sys.executable, "-m", "tunesmith.tune.workers", str(payload)], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                preexec_fn=die_with_parent)))
        failures = []
        for device, process in started:
            _, stderr = process.communicate()
            if process.returncode != 0:
                lines = [line for line in stderr.splitlines() if line.strip()]
                failures.append(f"worker on {device} exited with {process.returncode}: "
                                + (lines[-1] if lines else "no output"))
    if failures:
        raise TunesmithError("tuning workers failed; the run directory is as it was. " + "; ".join(failures))


def worker(payload_path: str) -> None:
    """One worker: trials of the shared study on this process's device."""
    import optuna

    from tunesmith import data, track
    from tunesmith.tune.budget import StepBudget
    from tunesmith.tune.objective import objective
    from tunesmith.tune.space import pruner, sampler, worker_seed_offset
    from tunesmith.tune.storage import open_storage

    payload = json.loads(Path(payload_path).read_text())
    recipe = Recipe.model_validate(payload["recipe"])
    view = RunDir(Path(payload["root"]), home=Path(payload["home"]) if payload["home"] else None)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = recipe.tune
    storage = open_storage(cfg, view, payload["storage"])
    study = optuna.load_study(study_name=payload["study"], storage=storage,
                              sampler=sampler(cfg, worker_seed_offset()), pruner=pruner(cfg))
    budget = StepBudget(cfg.max_training_steps, recipe.train.max_steps)
    if budget.fits(study):
        study_run = track.for_study(recipe, view, study)  # the parent's: the study records it
        study.optimize(objective(recipe, view, data.load_splits(view), study_run), n_trials=payload["trials"],
                       timeout=cfg.timeout_minutes * 60 if cfg.timeout_minutes else None,
                       catch=(RuntimeError,), callbacks=[budget])


def main(argv: list[str]) -> Any:
    try:
        from tunesmith.interrupts import die_with_parent

        die_with_parent()
        worker(argv[0])
    except TunesmithError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
