"""The embedded SmolLM2: converted once to safetensors in the cache, then 2 training steps."""

import pytest

from tunesmith import data, train
from tunesmith.models.loading import EMBEDDED, embedded_path
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run

pytestmark = pytest.mark.slow


def test_embedded_model_loads_from_cache_and_trains(tmp_path, chat_files):
    path = embedded_path("embedded:smollm2-135m-instruct")
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    assert embedded_path("embedded:smollm2-135m-instruct") == path  # second call: the cache
    assert EMBEDDED["smollm2-135m-instruct"].license == "apache-2.0"

    recipe = load_recipe(None, [
        f"data.train={chat_files['train']}", f"output.dir={tmp_path / 'runs'}",
        "train.max_steps=2", "train.batch_size=2", "train.save_steps=100", "train.logging_steps=1",
        "data.val_fraction=0.05",
    ])
    run_dir = open_run(recipe)
    data.run(recipe, run_dir)
    result = train.run(recipe, run_dir)
    assert result.steps == 2
    assert (run_dir.model / "adapter_model.safetensors").exists()
    assert result.train_loss is not None and result.train_loss > 0
