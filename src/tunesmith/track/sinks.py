"""One class per experiment tracker, each on the tracker's own library, all with one shape:

    Sink(store, project, name, resume, parent)   start a tracker run (or reopen `resume`, its id)
    .run_id                                       what reopens it later (train -> eval -> report)
    .params(dict)  .metrics(dict, step)  .summary(dict, step)  .artifact(path)  .finish(state)

`state` is finished, failed or pruned (a tune trial the pruner stopped). A `parent` makes the run a
child (a tune trial of its study): MLflow's nested runs, TensorBoard's sub-directories, W&B's and
Trackio's run groups. Credentials are the trackers' own environment variables (WANDB_API_KEY,
HF_TOKEN, MLFLOW_TRACKING_TOKEN...); nothing here reads or writes one.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

STATES = ("finished", "failed", "pruned")


class MLflowSink:
    """MLflow's client: `tracking/mlflow.db` (SQLite) and `tracking/mlflow-artifacts/` in the run
    directory, unless MLFLOW_TRACKING_URI names another store; the experiment is the recipe's name
    unless MLFLOW_EXPERIMENT_NAME says otherwise."""

    name = "mlflow"

    def __init__(self, store: Path, project: str, name: str, resume: str | None,
                 parent: MLflowSink | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(uri or f"sqlite:///{(store / 'mlflow.db').resolve()}")
        if resume is not None:
            self.run_id = resume
            self.client.update_run(resume, status="RUNNING")
            return
        if parent is not None:
            experiment = parent.experiment
        else:
            title = os.environ.get("MLFLOW_EXPERIMENT_NAME") or project
            found = self.client.get_experiment_by_name(title)
            experiment = found.experiment_id if found else self.client.create_experiment(
                title, artifact_location=None if uri else (store / "mlflow-artifacts").resolve().as_uri())
        tags = {"mlflow.parentRunId": parent.run_id} if parent is not None else {}
        self.run_id = self.client.create_run(experiment, run_name=name, tags=tags).info.run_id

    @property
    def experiment(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    summary = metrics

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, state: str) -> None:
        self.client.set_tag(self.run_id, "tunesmith.state", state)
        self.client.set_terminated(self.run_id, "FAILED" if state == "failed" else "FINISHED")


class TensorBoardSink:
    """TensorBoard event files (torch.utils.tensorboard) in `tracking/tensorboard/<run>/`, a tune
    trial in `<study>/<trial>/`: `tensorboard --logdir runs/NAME/tracking/tensorboard`. The
    recipe and the text artifacts (card, eval summary) are text summaries; scalars are curves."""

    name = "tensorboard"

    def __init__(self, store: Path, project: str, name: str, resume: str | None,
                 parent: TensorBoardSink | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = resume or (f"{parent.run_id}/{name}" if parent is not None else name)
        self.writer = SummaryWriter(log_dir=str(store / "tensorboard" / self.run_id))

    def params(self, params: dict[str, str]) -> None:
        rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in params.items())
        self.writer.add_text("recipe", "| key | value |\n|---|---|\n" + rows, 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    summary = metrics

    def artifact(self, path: Path) -> None:
        if path.suffix in (".md", ".json", ".yaml", ".csv"):  # the HTML report has no place here
            self.writer.add_text(path.name, path.read_text(encoding="utf-8")[:100_000], 0)

    def finish(self, state: str) -> None:
        self.writer.add_text("state", state, 0)
        self.writer.close()


def _wandb_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:120]


class WandbSink:
    """Weights & Biases (`wandb.init`): project WANDB_PROJECT or the recipe's name, files under
    `tracking/`, the key from WANDB_API_KEY (or `wandb login`'s netrc); WANDB_MODE=offline works
    without an account. A tune study is a W&B group: its runs and its trials'."""

    name = "wandb"

    def __init__(self, store: Path, project: str, name: str, resume: str | None,
                 parent: WandbSink | None) -> None:
        import wandb

        store.mkdir(parents=True, exist_ok=True)
        self.group = parent.group if parent is not None else name
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", project), name=name, id=resume,
                              resume="allow" if resume else None, dir=str(store), group=self.group,
                              job_type="trial" if parent is not None else "train",
                              reinit="create_new")
        self.run_id = self.run.id

    def params(self, params: dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=max(step, self.run.step))  # W&B's steps only go forward

    def summary(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def artifact(self, path: Path) -> None:
        import wandb

        artifact = wandb.Artifact(_wandb_name(f"{self.run.name}-{path.name}"), type="tunesmith")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, state: str) -> None:
        self.run.summary["tunesmith.state"] = state
        self.run.finish(exit_code=1 if state == "failed" else 0)


class TrackioSink:
    """Trackio (`trackio.init`): a local SQLite project under TRACKIO_DIR (default
    ~/.cache/huggingface/trackio), or a Hugging Face Space with TRACKIO_SPACE_ID (HF_TOKEN from the
    environment). A tune study is a Trackio group."""

    name = "trackio"

    def __init__(self, store: Path, project: str, name: str, resume: str | None,
                 parent: TrackioSink | None) -> None:
        import trackio

        self.group = parent.group if parent is not None else name
        self.run = trackio.init(project=project, name=resume or name, group=self.group,
                                resume="allow" if resume else "never",
                                space_id=os.environ.get("TRACKIO_SPACE_ID"))
        self.run_id = self.run.name  # Trackio resumes a run by name (it renames a clash)
        self.step = 0

    def params(self, params: dict[str, str]) -> None:
        self.run.config.update(params)  # sent with the first log

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.step = max(step, self.step)
        self.run.log(values, step=self.step)

    summary = metrics

    def artifact(self, path: Path) -> None:
        import trackio

        trackio.log_artifact(path, name=_wandb_name(f"{self.run_id}-{path.name}"), type="tunesmith")

    def finish(self, state: str) -> None:
        self.run.log({"pruned": float(state == "pruned"), "failed": float(state == "failed")}, step=self.step)
        self.run.finish()


SINKS: dict[str, Any] = {"mlflow": MLflowSink, "tensorboard": TensorBoardSink, "wandb": WandbSink,
                         "trackio": TrackioSink}
PACKAGES = {"mlflow": ("mlflow", "mlflow-skinny"), "tensorboard": ("tensorboard", "tensorboard"),
            "wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}
"""Tracker -> (module to import, package to install)."""
