"""`tunesmith push RUN org/name`: the run's model, model card and report in a Hugging Face Hub
repository, with huggingface_hub.

What is uploaded: the adapter (or the full weights) and tokenizer of model/, or with `--merged`
the merged model that `tunesmith export` writes (system prompt in its chat template, greedy
generation settings); README.md (the model card), report.html, eval/summary.json and the recipe.
The repository is private unless `--public`. The token comes from HF_TOKEN only and is never
printed; HF_ENDPOINT points at another Hub (a private one, or a test's fake). Before anything is
sent, the card's metadata is parsed by the hub library's own card parser (the YAML, and the
model-index into evaluation results), so a card the Hub would reject is refused here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.recipe import load_recipe
from tunesmith.rundir import RunDir

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def validate_card(text: str, where: str) -> dict:
    """The card's metadata as the Hub reads it (huggingface_hub's parser); a clear error if it cannot."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as error:  # the library raises ValueError / yaml errors with the reason
        raise ConfigError(f"{where}: the model card's metadata is not valid for the Hub ({error}). "
                          "Rebuild it: tunesmith report RUN.") from None
    return card.data.to_dict()


def _folder(run: RunDir, merged: bool, staging: Path) -> None:
    """What goes into the repository, laid out at its root."""
    if merged:
        from tunesmith.export.merged import export_merged

        export_merged(run.root, staging)  # an empty directory: the export takes its place
    else:
        shutil.copytree(run.model, staging, ignore=shutil.ignore_patterns("merged"), dirs_exist_ok=True)
    for document in (run.card, run.report_html, run.eval_summary, run.recipe):
        if document.is_file():
            target = staging / ("eval_summary.json" if document == run.eval_summary else document.name)
            shutil.copyfile(document, target)


def push(run_path: str | Path, repo_id: str, public: bool = False, merged: bool = False) -> str:
    """Upload the run to `repo_id` (created if needed, private unless `public`); its commit's URL."""
    from huggingface_hub import HfApi

    if not REPO_ID.match(repo_id):
        raise ConfigError(f"{repo_id}: not a Hub repository id; write it as org/name (or user/name).")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("HF_TOKEN is not set: create a token with write access "
                          "(https://huggingface.co/settings/tokens) and export HF_TOKEN=... in the "
                          "environment.")
    run = RunDir(Path(run_path))
    if not (run.recipe.is_file() and run.has_model()):
        raise ConfigError(f"{run_path}: not a run directory with a trained model. Point at a directory "
                          "that `tunesmith run` wrote.")
    if not run.card.is_file():
        raise ConfigError(f"{run_path}: no model card (README.md) yet. Run `tunesmith eval` first: it "
                          "writes the card and the report.")
    recipe = load_recipe(run.recipe)
    if merged and recipe.train.adapter != "lora":
        raise ConfigError("--merged: this run trained full weights; they are pushed as they are "
                          "(drop --merged).")
    validate_card(run.card.read_text(encoding="utf-8"), str(run.card))
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    with tempfile.TemporaryDirectory(prefix="tunesmith-push-") as tmp:
        _folder(run, merged, Path(tmp))
        try:
            api.create_repo(repo_id, private=not public, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=tmp,
                                       commit_message=f"tunesmith push: {recipe.name}")
        except (HfHubHTTPError, ValueError) as error:  # ValueError: the Hub refused the card
            status = getattr(getattr(error, "response", None), "status_code", None)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"the Hub ({api.endpoint}) refused the push to {repo_id}"
                              f"{f' with {status}' if status else ''}: {reason}. Check that HF_TOKEN has "
                              f"write access to {repo_id.split('/')[0]}.") from None
    return str(commit.commit_url)
