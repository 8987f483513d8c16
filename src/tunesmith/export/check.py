"""Does an export answer as the run was scored? The run's test prompts, sent the way a client
sends them (no system prompt from us: the export must carry its own), answered by the exported
model, compared with the fine-tuned answers `tunesmith eval` recorded, and scored with the
run's metric on the same examples.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.recipe import Recipe, load_recipe
from tunesmith.rundir import RunDir


def refuse_a_full_directory(out: str | Path) -> None:
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty. Choose a new directory (nothing was written).")


@contextlib.contextmanager
def new_directory(out: str | Path) -> Iterator[Path]:
    """A staging directory beside `out` that becomes `out` when the block succeeds: an export is
    written whole or not at all."""
    refuse_a_full_directory(out)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def manifest(run: RunDir, recipe: Recipe, **fields: Any) -> str:
    """tunesmith_export.json: the run, what was built in, the decoding it was evaluated with."""
    return json.dumps({"run": str(run.root), "run_name": recipe.name, **fields,
                       "system_prompt_in_template": recipe.data.system_prompt,
                       "generation": {"do_sample": False, "max_new_tokens": recipe.eval.max_new_tokens}},
                      indent=1) + "\n"


def checked_run(run_path: str | Path) -> tuple[RunDir, Recipe]:
    """A run directory with a trained decoder, and its recipe."""
    run = RunDir(Path(run_path))
    if not (run.recipe.is_file() and run.has_model()):
        raise ConfigError(f"{run_path}: not a run directory with a trained model (recipe.yaml and model/). "
                          "Point at a directory that `tunesmith train` or `tunesmith run` wrote.")
    recipe = load_recipe(run.recipe)
    if recipe.model.family != "causal_lm":
        raise ConfigError(f"{run_path}: a {recipe.model.family} run; export writes decoders for vLLM / TGI, "
                          "llama.cpp and Ollama. Its model/ directory already loads with transformers' "
                          "pipelines.")
    return run, recipe


@dataclass
class Agreement:
    """How the export answered the run's test prompts, against `tunesmith eval`'s answers."""

    examples: int
    same: int
    dtype: str
    differing: list[dict[str, str]]
    """Up to five: the prompt, the evaluation's answer and the export's."""
    metric: str = "none"
    eval_score: float | None = None
    """The run's metric (eval.metric) of evaluation's fine-tuned answers to these prompts."""
    export_score: float | None = None
    """... and of the export's answers to the same prompts."""

    @property
    def share(self) -> float:
        return self.same / self.examples if self.examples else 0.0


def agreement(run: RunDir, recipe: Recipe, answer: Callable[[list[dict[str, Any]]], str], dtype: str,
              limit: int = 30) -> Agreement:
    """`answer(messages)` for the run's first `limit` test prompts, against eval/predictions.jsonl."""
    from tunesmith.artifacts import Prediction, load_rows
    from tunesmith.evaluate.metrics import score
    from tunesmith.files import read_jsonl
    from tunesmith.models.chat import prompt_and_reference
    from tunesmith.records import split_reasoning

    predictions_path = run.eval / "predictions.jsonl"
    if not predictions_path.exists() or not run.split("test").exists():
        raise ConfigError(f"{run.root}: no evaluated test set to compare with. Run `tunesmith eval` first.")
    tested = {p.index: p for p in load_rows(Prediction, predictions_path) if p.set == "test"}
    records = read_jsonl(run.split("test"))[:limit]
    same, differing, ours, theirs = 0, [], [], []
    for index, record in enumerate(records):
        prompt, _reference = prompt_and_reference(record, None)  # what a client sends: no system prompt
        prompt = [{k: v for k, v in m.items() if k != "tools"} for m in prompt]
        answer_text = split_reasoning(answer(prompt).strip())[1].strip()
        evaluated = tested[index]
        expected = evaluated.finetuned_prediction.strip()
        if answer_text == expected:
            same += 1
        elif len(differing) < 5:
            differing.append({"prompt": prompt[-1]["content"][:200], "eval": expected, "export": answer_text})
        mine = score(recipe.eval.metric, answer_text, evaluated.reference, recipe.eval.json_fields)
        if mine is not None and evaluated.finetuned_score is not None:
            ours.append(mine)
            theirs.append(evaluated.finetuned_score)
    return Agreement(len(records), same, dtype, differing, recipe.eval.metric,
                     sum(theirs) / len(theirs) if theirs else None, sum(ours) / len(ours) if ours else None)
