"""`tunesmith export RUN_DIR OUT`: the run's model as one plain model directory (LoRA merged into
its base, safetensors, tokenizer with its chat template) that vLLM, TGI and transformers load
unchanged, and that `tunesmith serve --engine vllm` hands to vLLM."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.recipe import load_recipe
from tunesmith.rundir import RunDir


def export_merged(run_path: str | Path, out: str | Path) -> Path:
    from tunesmith.models.loading import load_run_model

    run, target = RunDir(Path(run_path)), Path(out)
    if not (run.recipe.is_file() and run.has_model()):
        raise ConfigError(f"{run_path}: not a run directory with a trained model (recipe.yaml and model/). "
                          "Point at a directory that `tunesmith train` or `tunesmith run` wrote.")
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty. Choose a new directory (nothing was written).")
    recipe = load_recipe(run.recipe)
    run_model = load_run_model(recipe.model, recipe.train.adapter, run.model)
    model = run_model.model.merge_and_unload() if recipe.train.adapter == "lora" else run_model.model
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:  # written whole or not at all
        model.save_pretrained(staging, safe_serialization=True)
        run_model.tokenizer.save_pretrained(staging)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
