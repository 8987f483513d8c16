"""Runs as transactions: a failure leaves nothing, a commit is all or nothing (and finishes after
kill -9), stale artifacts go, and recipe.yaml always describes what made the artifacts."""

import json
import os
import shutil

import pytest
import yaml

from tunesmith.errors import ConfigError
from tunesmith.files import read_json, sha256_file, write_text
from tunesmith.recipe import load_recipe
from tunesmith.rundir import JOURNAL, _roll_forward, open_run


def recipe(tmp_path, *overrides):
    return load_recipe(None, [f"output.dir={tmp_path}", "name=r", *overrides])


def stage(run, r, stages, files):
    with run.transaction(r, stages) as view:
        for name, text in files.items():
            write_text(view.root / name, text)


def test_a_failed_command_on_a_new_run_leaves_no_directory(tmp_path):
    run = open_run(recipe(tmp_path))
    with pytest.raises(RuntimeError), run.transaction(recipe(tmp_path), ("data",)) as view:
        write_text(view.data / "train.jsonl", "{}\n")
        raise RuntimeError("boom")
    assert not run.root.exists()


def test_commit_records_hashes_and_the_recipe(tmp_path):
    r = recipe(tmp_path, "train.lr=0.001")
    run = open_run(r)
    stage(run, r, ("data",), {"data/train.jsonl": "a\n"})
    stage(run, r, ("train",), {"model/config.json": "{}", "train/summary.json": "{}"})
    manifest = read_json(run.manifest)
    assert sorted(manifest["artifacts"]) == ["data/train.jsonl", "model/config.json", "train/summary.json"]
    assert manifest["artifacts"]["data/train.jsonl"]["sha256"] == sha256_file(run.data / "train.jsonl")
    assert yaml.safe_load(run.recipe.read_text())["train"]["lr"] == 0.001
    assert sorted(os.listdir(run.root)) == [".lock", "data", "manifest.json", "model", "recipe.yaml", "train"]


def test_new_data_makes_the_evaluation_stale_and_a_conflict_is_refused(tmp_path):
    r = recipe(tmp_path)
    run = open_run(r)
    stage(run, r, ("data", "train"), {"data/train.jsonl": "a\n", "model/config.json": "{}"})
    stage(run, r, ("eval",), {"eval/summary.json": "{}"})
    before = {p: sha256_file(run.root / p) for p in read_json(run.manifest)["artifacts"]}
    # evaluating with another learning rate would make recipe.yaml lie about the model
    with pytest.raises(ConfigError, match=r"its train artifacts were made with other recipe values "
                                          r"\(train.lr: 0.0002 -> 0.1\)"):
        stage(run, recipe(tmp_path, "train.lr=0.1"), ("eval",), {"eval/summary.json": "{}"})
    # preparing other data under a trained model is refused (it would throw the model away)
    with pytest.raises(ConfigError, match="would make its train artifacts stale"):
        stage(run, r, ("data",), {"data/train.jsonl": "b\n"})
    assert {p: sha256_file(run.root / p) for p in read_json(run.manifest)["artifacts"]} == before
    # retraining replaces data and model; the old evaluation is removed as stale
    stage(run, recipe(tmp_path, "train.lr=0.1"), ("data", "train"),
          {"data/train.jsonl": "b\n", "model/config.json": "{}"})
    assert not run.eval.exists() and "eval" not in read_json(run.manifest)["stages"]
    assert yaml.safe_load(run.recipe.read_text())["train"]["lr"] == 0.1


def test_an_unchanged_stage_commits_nothing(tmp_path):
    r = recipe(tmp_path)
    run = open_run(r)
    stage(run, r, ("data", "train"), {"data/train.jsonl": "a\n", "model/config.json": "{}"})
    manifest = run.manifest.read_text()
    # the same data again, from a recipe whose train section differs: nothing the data stage
    # made changes, and recipe.yaml keeps describing the model that exists
    stage(run, recipe(tmp_path, "train.lr=0.5"), ("data",), {"data/train.jsonl": "a\n"})
    assert run.manifest.read_text() == manifest
    assert yaml.safe_load(run.recipe.read_text())["train"]["lr"] == 0.0002


def test_a_commit_cut_short_by_kill_9_is_finished_by_the_next_command(tmp_path):
    r = recipe(tmp_path)
    run = open_run(r)
    stage(run, r, ("data",), {"data/train.jsonl": "old\n"})
    view = run.root / ".staging" / "x"
    write_text(view / "data" / "train.jsonl", "new\n")
    manifest = read_json(run.manifest)
    manifest["artifacts"]["data/train.jsonl"]["sha256"] = sha256_file(view / "data" / "train.jsonl")
    journal = {"moves": [[str(view / "data"), str(run.data)]], "remove": [], "manifest": manifest,
               "recipe": run.recipe.read_text(), "merge": []}
    write_text(run.root / JOURNAL, json.dumps(journal))
    os.replace(run.data, run.root / "half-moved")  # the process died between the two renames
    reopened = open_run(r)
    assert (reopened.data / "train.jsonl").read_text() == "new\n"
    assert not (run.root / JOURNAL).exists()
    assert read_json(run.manifest)["artifacts"]["data/train.jsonl"]["sha256"] == sha256_file(
        run.data / "train.jsonl")
    _roll_forward(reopened)  # nothing left to do, and doing it again is harmless
    shutil.rmtree(run.root / "half-moved")


def test_resume_needs_an_interrupted_training_of_the_same_recipe(tmp_path):
    from tunesmith.train import check_resumable

    r = recipe(tmp_path, "train.lr=0.001")
    run = open_run(r)
    with pytest.raises(ConfigError, match="nothing to resume .* Train without --resume"):
        check_resumable(r, run, resume=True)
    write_text(run.checkpoints / "checkpoint-5" / "trainer_state.json", "{}")
    write_text(run.checkpoints / "recipe.json", json.dumps(r.model_dump(mode="json")))
    check_resumable(r, run, resume=True)  # the same recipe: fine
    with pytest.raises(ConfigError, match=r"other recipe values \(train.lr: 0.001 -> 0.002\)"):
        check_resumable(recipe(tmp_path, "train.lr=0.002"), run, resume=True)
