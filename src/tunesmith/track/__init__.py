"""Experiment tracking: `train.report_to: [mlflow, tensorboard, wandb, trackio]` (default none).

One tracker run per trained model: `tunesmith train` starts it (the resolved recipe as
parameters, every logged step's losses, learning rate, throughput and memory), `tunesmith eval`
reopens it (the scores with their CI bounds; the card, report and eval summary as artifacts).
`tunesmith tune` is one parent run per study with a child per trial (a pruned trial's state says
so). The ids live in the run directory's `tracking/current.json` (and a study's in the study, so
that workers on other machines share its parent run); the local stores too: `tracking/mlflow.db`,
`tracking/tensorboard/`.

A tracker that fails while a run trains (a server gone) is warned about once and dropped: the
training it watches goes on.

    sinks.py   one class per tracker, each on its own library
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunesmith.console import warn
from tunesmith.errors import ConfigError
from tunesmith.explain import connection_problem
from tunesmith.files import read_json, write_json
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, flatten
from tunesmith.track.sinks import PACKAGES, SINKS

CURRENT = "current.json"


def check_installed(names: Iterable[str]) -> None:
    """A clear error, before any training, for a tracker whose library is missing."""
    for name in names:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.report_to: {name} needs its library: pip install {package} "
                              "(or `pip install 'tunesmith[tracking]'` for all four).")


class Tracking:
    """The trackers of one run (or trial); every call goes to each of them. Empty when the recipe
    reports to none, so callers never need to check."""

    def __init__(self, sinks: list[Any], store: Path | None = None, project: str = "") -> None:
        self.sinks = sinks
        self.store, self.project = store, project
        self.step = 0

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _each(self, what: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, what)(*args)
            except Exception as error:  # a tracker's failure must not stop the training it watches
                warn(f"{sink.name}: {what} failed ({type(error).__name__}: {error}); "
                     f"no longer reporting to {sink.name} in this command.")
                self.sinks.remove(sink)

    def params(self, recipe: Recipe | dict[str, Any]) -> None:
        tree = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
        self._each("params", {key: str(value) for key, value in flatten(tree).items()})

    def metrics(self, values: dict[str, float | None], step: int) -> None:
        self.step = max(self.step, step)
        self._each("metrics", _finite(values), step)

    def summary(self, values: dict[str, float | None]) -> None:
        """Final values (scores, totals): logged at the last step seen."""
        if values := _finite(values):
            self._each("summary", values, self.step)

    def artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            if path.is_file():
                self._each("artifact", path)

    def child(self, name: str) -> Tracking:
        """A child run (a tune trial) in each tracker, in the same stores."""
        assert self.store is not None
        return Tracking([type(s)(self.store, self.project, name, None, s) for s in self.sinks],
                        self.store, self.project)

    def finish(self, state: str = "finished") -> None:
        self._each("finish", state)

    def ids(self) -> dict[str, str]:
        return {sink.name: sink.run_id for sink in self.sinks}


def _finite(values: dict[str, float | None]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()
            if value is not None and math.isfinite(value)}


SETTINGS = {"mlflow": "MLFLOW_TRACKING_URI", "tensorboard": "the run directory's permissions",
            "wandb": "WANDB_API_KEY, WANDB_PROJECT or WANDB_MODE=offline",
            "trackio": "TRACKIO_DIR or TRACKIO_SPACE_ID"}


def _open(recipe: Recipe, store: Path, name: str, resume: dict[str, str]) -> Tracking:
    """Each tracker's run; one that cannot start is a clear error before any training."""
    check_installed(recipe.train.report_to)
    sinks: list[Any] = []
    for tracker in recipe.train.report_to:
        try:
            sinks.append(SINKS[tracker](store, recipe.name, name, resume.get(tracker), None))
        except Exception as error:
            Tracking(sinks).finish("failed")
            said = " ".join(str(error).split())[:200]
            reason = connection_problem(error, f"{tracker} said: {said}" if said else "no reason given")
            raise ConfigError(f"train.report_to: {tracker} could not start a run ({reason}). "
                              f"Check {SETTINGS[tracker]}, or drop {tracker} from train.report_to.") from None
    return Tracking(sinks, store, recipe.name)


def store_of(run_dir: RunDir) -> Path:
    return (run_dir.home or run_dir.root) / "tracking"


def start(recipe: Recipe, run_dir: RunDir) -> Tracking:
    """New tracker runs for a model about to be trained, the recipe logged as parameters."""
    if not recipe.train.report_to:
        return Tracking([])
    store = store_of(run_dir)
    tracking = _open(recipe, store, recipe.output.run_name or recipe.name, {})
    tracking.params(recipe)
    write_json(store / CURRENT, tracking.ids())
    return tracking


def reopen(recipe: Recipe, run_dir: RunDir) -> Tracking:
    """The tracker runs of the run's model (new ones for a model trained untracked)."""
    if not recipe.train.report_to:
        return Tracking([])
    store = store_of(run_dir)
    recorded = read_json(store / CURRENT) if (store / CURRENT).is_file() else {}
    tracking = _open(recipe, store, recipe.output.run_name or recipe.name, recorded)
    if set(recorded) != set(tracking.ids()):
        write_json(store / CURRENT, {**recorded, **tracking.ids()})
    return tracking


def for_study(recipe: Recipe, run_dir: RunDir, study: Any) -> Tracking:
    """The study's parent run: the one the study records (another worker started it), or a new one."""
    if not recipe.train.report_to:
        return Tracking([])
    recorded = study.user_attrs.get("tracking", {})
    tracking = _open(recipe, store_of(run_dir), f"study {study.study_name}", recorded)
    if not recorded:
        tracking.params(recipe)
        study.set_user_attr("tracking", tracking.ids())
    return tracking


def eval_scores(summary: Any) -> dict[str, float]:
    """Every set's scores, per model, with CI bounds, and the paired delta: `test/finetuned/accuracy`,
    `test/finetuned/accuracy_ci_low`, `test/delta/accuracy`..."""
    values: dict[str, float] = {}
    for name, result in summary.sets.items():
        for model in ("finetuned", "base"):
            scores = getattr(result, model)
            if scores is None:
                continue
            if scores.value is not None:
                values[f"{name}/{model}/{summary.metric}"] = scores.value
                if scores.ci is not None:
                    values[f"{name}/{model}/{summary.metric}_ci_low"] = scores.ci[0]
                    values[f"{name}/{model}/{summary.metric}_ci_high"] = scores.ci[1]
            for metric, interval in scores.metrics.items():
                values[f"{name}/{model}/{metric}"] = interval.value
                values[f"{name}/{model}/{metric}_ci_low"] = interval.ci_low
                values[f"{name}/{model}/{metric}_ci_high"] = interval.ci_high
        if result.paired is not None:
            values[f"{name}/delta/{summary.metric}"] = result.paired.delta
            values[f"{name}/delta/{summary.metric}_ci_low"] = result.paired.ci_low
            values[f"{name}/delta/{summary.metric}_ci_high"] = result.paired.ci_high
            values[f"{name}/delta/{summary.metric}_p_value"] = result.paired.p_value
    return values


def evaluated(recipe: Recipe, run_dir: RunDir, summary: Any) -> None:
    """After `tunesmith eval` committed: its scores and the run's documents to the model's tracker runs."""
    tracking = reopen(recipe, run_dir)
    if not tracking:
        return
    tracking.summary(eval_scores(summary))
    tracking.artifacts([run_dir.eval_summary, run_dir.card, run_dir.report_html, run_dir.recipe])
    tracking.finish()
