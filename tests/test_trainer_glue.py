"""The Trainer glue in one place (train/trainer.py): one table of backends, the shared arguments,
and a default path that never imports TRL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

from tunesmith.recipe import load_recipe
from tunesmith.train.trainer import BACKENDS, backend_name


def _job(*overrides: str, family: str = "causal_lm") -> SimpleNamespace:
    return SimpleNamespace(recipe=load_recipe(None, [*overrides, f"model.family={family}"]),
                           family=SimpleNamespace(name=family))


def test_one_table_says_which_backend_trains_what():
    assert backend_name(_job()) == "tunesmith"  # lora
    assert backend_name(_job("train.method=qlora")) == "tunesmith"  # QLoRA differs in loading only
    assert backend_name(_job("train.method=full")) == "tunesmith"
    assert backend_name(_job("train.backend=trl")) == "trl"
    assert backend_name(_job("train.method=dpo")) == "preference"
    assert backend_name(_job("train.method=grpo")) == "grpo"
    assert backend_name(_job("train.method=grpo", "train.backend=trl")) == "grpo"  # backend: SFT's engine
    assert backend_name(_job(family="encoder")) == "transformers"
    assert backend_name(_job(family="seq2seq")) == "transformers"
    assert set(BACKENDS) == {"tunesmith", "trl", "preference", "grpo", "transformers"}


def test_the_default_path_trains_without_importing_trl(tmp_path, tiny_model_dir, chat_files):
    script = textwrap.dedent(f"""
        import sys
        from tunesmith import pipeline
        from tunesmith.recipe import load_recipe
        recipe = load_recipe(None, ["model.name={tiny_model_dir}", "data.train={chat_files['train']}",
                                    "output.dir={tmp_path / 'runs'}", "train.max_steps=2",
                                    "train.max_length=1024"])
        pipeline.fine_tune(recipe)
        print("trl imported:", any(name == "trl" or name.startswith("trl.") for name in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trl imported: False" in done.stdout
