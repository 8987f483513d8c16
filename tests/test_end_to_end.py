"""inspect -> prepare -> train -> eval on the tiny model, and resume after kill -9."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tunesmith import data, evaluate, pipeline, train
from tunesmith.artifacts import DataReport, EvalSummary, LogEntry, Prediction, TrainSummary, load, load_rows
from tunesmith.data.inspect import inspect_file
from tunesmith.files import read_json, sha256_file
from tunesmith.models.loading import load_tokenizer
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run


def tiny_recipe(tmp_path, model_dir, files, *extra):
    return load_recipe(None, [
        f"model.name={model_dir}", f"data.train={files['train']}", f"data.test={files['test']}",
        f"output.dir={tmp_path / 'runs'}", "name=tiny", "train.batch_size=4", "train.lr=0.01",
        "train.save_steps=4", "train.logging_steps=2", "train.epochs=2", "eval.max_new_tokens=4",
        "data.val_fraction=0.125", *extra,
    ])


def test_inspect_prepare_train_eval(tmp_path, tiny_model_dir, chat_files):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, chat_files)
    report = inspect_file(str(chat_files["train"]), recipe, load_tokenizer(recipe.model))
    assert report.format == "alpaca" and report.valid_rows == 48 and report.invalid_rows == 0
    assert report.tokens["max"] >= report.tokens["p50"] > 10
    assert report.data_report.loaded_train_rows == 48  # the stage's report, from the same one pass

    run_dir = open_run(recipe)
    prepared = pipeline.prepare(recipe)
    assert {k: len(v) for k, v in prepared.splits.items()} == {"train": 42, "val": 6, "test": 6}
    base_weights = sha256_file(next(tiny_model_dir.glob("*.safetensors")))

    result = pipeline.fine_tune(recipe)
    assert result.steps == 22  # ceil(42 / 4) = 11 steps per epoch, 2 epochs
    # only LoRA weights changed: the base file is untouched, the adapter holds only LoRA
    # tensors, and LoRA B (initialised to zero) has moved.
    assert sha256_file(next(tiny_model_dir.glob("*.safetensors"))) == base_weights
    from safetensors.torch import load_file

    adapter = load_file(run_dir.model / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    assert not list(run_dir.model.glob("*.bin")), "no pickle files in the model dir"
    log = [json.loads(line) for line in run_dir.train_log.read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == list(range(2, 23, 2))
    assert any("eval_loss" in e for e in log)

    assert not run_dir.checkpoints.exists(), "checkpoints go once the model is committed"
    outcome = pipeline.evaluate_run(recipe)
    summary = load(EvalSummary, run_dir.eval / "summary.json")
    assert summary == outcome.summary  # what was written is what the stage returned
    assert summary.sets["test"].examples == 6
    test = summary.sets["test"]
    assert test.base.value is not None and test.finetuned.value is not None and test.paired is not None
    assert summary.validation.finetuned.loss < summary.validation.base.loss
    # every JSON file of the run reads back through its one schema (the readers' view of it)
    assert load(DataReport, run_dir.data_report).splits == {"train": 42, "val": 6, "test": 6}
    assert load(TrainSummary, run_dir.train_summary).steps == 22
    logged = load_rows(LogEntry, run_dir.train_log)
    assert [e.step for e in logged if e.loss is not None] == list(range(2, 23, 2))
    assert [p.index for p in load_rows(Prediction, run_dir.predictions)] == list(range(6))
    predictions = [json.loads(line) for line in (run_dir.eval / "predictions.jsonl").open()]
    assert len(predictions) == 6
    assert {"base_prediction", "finetuned_prediction", "reference"} <= set(predictions[0])
    manifest = read_json(run_dir.manifest)["artifacts"]
    assert {"data/train.jsonl", "model/adapter_model.safetensors", "train/log.jsonl",
            "eval/summary.json", "README.md"} <= set(manifest)
    for name, entry in manifest.items():  # the manifest tells the truth about every file
        assert sha256_file(run_dir.root / name) == entry["sha256"], name
    assert sorted(read_json(run_dir.manifest)["stages"]) == ["data", "eval", "report", "train"]


def test_evaluation_scores_a_fake_generator(tmp_path, tiny_model_dir, chat_files):
    """The metric arithmetic on hand-checked answers: a fake that is right on half the set."""
    recipe = tiny_recipe(tmp_path, tiny_model_dir, chat_files, "train.max_steps=1")
    run_dir = open_run(recipe)
    data.run(recipe, run_dir)
    train.run(recipe, run_dir)

    class HalfRight:
        def __init__(self, model, tokenizer):
            pass

        def generate(self, prompts, label):
            answers = []
            for i, prompt in enumerate(prompts):
                colour = prompt[-1]["content"].split()[2]
                right = colour[:2].upper()
                answers.append(right if ("fine-tuned" in label and i % 2 == 0) else "??")
            return answers

    test = evaluate.run(recipe, run_dir, generator_factory=HalfRight).summary.sets["test"]
    assert test.finetuned.value == pytest.approx(0.5)
    assert test.base.value == 0.0
    assert test.paired.delta == pytest.approx(0.5)


def test_resume_after_kill_9(tmp_path, tiny_model_dir, chat_files):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"name: crash\nmodel:\n  name: {tiny_model_dir}\n"
        f"data:\n  train: {chat_files['train']}\n"
        f"output:\n  dir: {tmp_path / 'runs'}\n"
        "train:\n  batch_size: 2\n  max_steps: 400\n  save_steps: 5\n  logging_steps: 5\n"
        "  eval_steps: 1000\n"
    )
    command = [sys.executable, "-m", "tunesmith", "train", str(recipe_path)]
    checkpoints = tmp_path / "runs" / "crash" / ".work" / "checkpoints"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "runs" / "crash" / "train").exists()
    assert not (tmp_path / "runs" / "crash" / "manifest.json").exists(), "nothing committed"

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_json(tmp_path / "runs" / "crash" / "train" / "summary.json")
    assert summary["steps"] == summary["max_steps"] == 400
    assert summary["resumed_from"].startswith("checkpoint-")
    log = [json.loads(line) for line in (tmp_path / "runs/crash/train/log.jsonl").open()]
    steps = [e["step"] for e in log if "loss" in e]
    assert steps == list(range(5, 401, 5)), "every logged step once, none lost, none doubled"
