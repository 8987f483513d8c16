"""The tune stage on the tiny model: strategies, pruning, cross-validation, best.yaml, and two
worker processes sharing one study on a real PostgreSQL server (started by scripts/postgres.sh)."""

import csv
import subprocess
import sys
import time

import pytest
import yaml

from conftest import needs_pg
from tunesmith import tune
from tunesmith.files import read_json
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run

SPACE = ("tune.space={train.lr: {type: float, low: 0.001, high: 0.05, log: true, grid: [0.001, 0.05]}, "
         "train.lora.r: {type: categorical, choices: [2, 4]}}")


def tune_recipe(tmp_path, model_dir, chat_files, *extra):
    return load_recipe(None, [
        f"model.name={model_dir}", f"data.train={chat_files['train']}", f"output.dir={tmp_path / 'runs'}",
        "name=tiny-tune", "train.batch_size=4", "train.max_steps=8", "train.eval_steps=2",
        "train.logging_steps=2", "train.save_steps=1000", "data.val_fraction=0.25", SPACE, *extra])


@pytest.mark.parametrize("strategy", ["grid", "random", "bayesian"])
def test_each_strategy_runs_and_writes_a_replayable_best(tmp_path, tiny_model_dir, chat_files, strategy):
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, f"tune.strategy={strategy}",
                         "tune.trials=4", "tune.pruner=none")
    run_dir = open_run(recipe)
    result = tune.run(recipe, run_dir)
    assert result.trials == 4 and result.best_value is not None
    rows = list(csv.DictReader((run_dir.root / "tune" / "trials.csv").open()))
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    if strategy == "grid":  # 2 x 2 grid: every combination exactly once
        combos = {(float(r["params_train.lr"]), int(float(r["params_train.lora.r"]))) for r in rows}
        assert combos == {(0.001, 2), (0.001, 4), (0.05, 2), (0.05, 4)}
    best = load_recipe(result.best_recipe)  # a complete, valid recipe
    assert best.train.lr == result.best_params["train.lr"]
    assert best.output.run_name == "tiny-tune-best" and not best.tune.space
    assert result.best_recipe.read_text().startswith("# tunesmith run ")
    summary = read_json(run_dir.root / "tune" / "summary.json")
    assert summary["completed"] == 4 and "history.png" in summary["figures"]


def test_pruning_prunes(tmp_path, tiny_model_dir, chat_files):
    # lr 1e-6 cannot move the loss, lr 0.05 can: after the first trials set the median, the
    # slow ones are stopped early
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=grid", "tune.pruner=median",
                         "tune.space={train.lr: {type: float, low: 1e-6, high: 0.05, grid: "
                         "[0.05, 0.04, 1e-6, 2e-6, 3e-6]}}", "train.max_steps=16", "tune.trials=5")
    result = tune.run(recipe, open_run(recipe))
    assert result.pruned >= 1
    summary = read_json(recipe.run_dir / "tune" / "summary.json")
    assert summary["training_steps_used"] < 5 * 16


def test_a_trial_is_pruned_before_its_last_evaluation_not_at_it():
    import optuna

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for _ in range(2):  # two finished trials set the median: 1.0 at step 5, 0.5 at step 10
        good = study.ask()
        good.report(1.0, 5)
        good.report(0.5, 10)
        study.tell(good, 0.5)
    worse = study.ask()
    assert tune.report(worse, 2.0, 5, last_step=10) is True       # worse than the median mid-run
    assert tune.report(worse, 2.0, 10, last_step=10) is False     # its full cost is paid: keep it


def test_a_training_run_does_not_depend_on_what_ran_before_it(tmp_path, tiny_model_dir, chat_files):
    # a tune trial and its replay from best.yaml must score the same: the adapter's random init is
    # seeded by the recipe, not by the process's RNG state
    import torch

    from tunesmith import data, train

    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "train.max_steps=4")
    run_dir = open_run(recipe)
    data.run(recipe, run_dir)
    first = train.run(recipe, run_dir).final_eval_loss
    torch.rand(1000)  # whatever else ran in between
    second = train.run(recipe, run_dir).final_eval_loss
    assert first == second


def test_step_budget_starts_a_trial_only_while_a_full_one_fits(tmp_path, tiny_model_dir, chat_files):
    # 8-step trials in a 20-step budget: two fit (16), a third could reach 24
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=random", "tune.pruner=none",
                         "tune.trials=null", "tune.max_training_steps=20")
    result = tune.run(recipe, open_run(recipe))
    summary = read_json(recipe.run_dir / "tune" / "summary.json")
    assert result.trials == 2 and summary["training_steps_used"] == 16
    assert summary["budget"]["max_training_steps"] == 20


def test_a_repeated_configuration_is_not_trained_again(tmp_path, tiny_model_dir, chat_files):
    # a one-point space: the sampler can only repeat it; trials 2 and 3 reuse trial 0's loss
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=bayesian", "tune.pruner=none",
                         "tune.trials=3", "tune.space={train.lora.r: {type: categorical, choices: [2]}}")
    run_dir = open_run(recipe)
    tune.run(recipe, run_dir)
    rows = list(csv.DictReader((run_dir.root / "tune" / "trials.csv").open()))
    summary = read_json(run_dir.root / "tune" / "summary.json")
    assert summary["training_steps_used"] == 8 and summary["duplicates"] == 2
    assert len({r["value"] for r in rows}) == 1
    assert [r["user_attrs_duplicate_of"] for r in rows] == ["", "0.0", "0.0"]


def test_a_search_without_a_budget_is_refused(tmp_path, tiny_model_dir, chat_files):
    from tunesmith.errors import ConfigError

    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=random", "tune.trials=null")
    with pytest.raises(ConfigError, match="no budget"):
        tune.run(recipe, open_run(recipe))


def test_cross_validation_gives_mean_and_std(tmp_path, tiny_model_dir, chat_files):
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.cv_folds=3", "tune.trials=2",
                         "tune.pruner=none", "train.max_steps=4")
    run_dir = open_run(recipe)
    tune.run(recipe, run_dir)
    summary = read_json(run_dir.root / "tune" / "summary.json")
    attrs = summary["best_user_attrs"]
    assert attrs["cv_mean"] == pytest.approx(summary["best_value"])
    assert attrs["cv_std"] >= 0 and attrs["steps"] == 3 * 4


def test_cv_folds_partition_the_training_rows():
    records = [{"label": str(i % 2), "meta": {}, "id": i} for i in range(20)]
    folds = tune.cv_folds(records, 4, "label", seed=1)
    validated = sorted(r["id"] for _, val in folds for r in val)
    assert validated == list(range(20))
    assert all(len(train) + len(val) == 20 for train, val in folds)


def test_empty_space_is_a_clear_error(tmp_path, tiny_model_dir, chat_files):
    from tunesmith.errors import ConfigError

    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={chat_files['train']}",
                                f"output.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="tune.space is empty"):
        tune.run(recipe, open_run(recipe))


STORAGE_RACE = """
import sys, time
from tunesmith.recipe import load_recipe
from tunesmith.rundir import RunDir
from tunesmith.tune.storage import open_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both workers start at the same instant
open_storage(load_recipe(None).tune, RunDir(__import__("pathlib").Path(sys.argv[3])), sys.argv[1])
"""


@needs_pg
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_workers_starting_together_on_an_empty_database_do_not_race(empty_pg_database, tmp_path, attempt):
    """Before the advisory lock, two workers creating Optuna's schema at once failed 2 times in 3
    (UniqueViolation on pg_type); each attempt here starts from a new, empty database."""
    start = str(time.time() + 3)
    workers = [subprocess.Popen([sys.executable, "-c", STORAGE_RACE, empty_pg_database, start,
                                 str(tmp_path / f"w{i}")], stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]


@needs_pg
def test_two_workers_share_one_postgres_study(tmp_path, tiny_model_dir, chat_files, empty_pg_database):
    recipe_path = tmp_path / "r.yaml"
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=random", "tune.pruner=none")
    recipe_path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    study = "two-workers"
    command = [sys.executable, "-m", "tunesmith", "tune", str(recipe_path), "--storage", empty_pg_database,
               "--study", study, "--trials", "3"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    import optuna

    loaded = optuna.load_study(study_name=study, storage=empty_pg_database)
    assert len(loaded.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in loaded.trials)
    assert len({t.user_attrs["worker"] for t in loaded.trials}) == 2, "both workers ran trials"
    trials = sorted(p.name for p in (tmp_path / "runs" / recipe.name / "tune" / "trials").iterdir())
    trained = sorted(f"trial-{t.number}" for t in loaded.trials if "duplicate_of" not in t.user_attrs)
    # a trial that repeats earlier values is answered from that trial, not trained: it leaves no directory
    assert trials == trained and len(trained) >= 4, "each worker's trials were merged into the one run"


def test_tune_writes_nothing_secret(tmp_path, tiny_model_dir, chat_files):
    """A storage URL with a password is never echoed in an error."""
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.trials=1")
    bad = "postgresql://user:s3cret@127.0.0.1:1/nowhere"
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        tune.run(recipe, open_run(recipe), storage=bad)
    assert "s3cret" not in str(error.value) and "cannot connect" in str(error.value)



def test_best_yaml_replays_through_the_cli(tmp_path, tiny_model_dir, chat_files):
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.trials=2", "tune.pruner=none",
                         f"data.test={chat_files['test']}", "eval.max_new_tokens=3",
                         "eval.forgetting_probe=false")
    result = tune.run(recipe, open_run(recipe))
    replay = subprocess.run([sys.executable, "-m", "tunesmith", "run", str(result.best_recipe)],
                            capture_output=True, text=True, timeout=600)
    assert replay.returncode == 0, replay.stderr[-2000:]
    best_run = tmp_path / "runs" / "tiny-tune-best"
    assert (best_run / "eval" / "summary.json").exists() and (best_run / "README.md").exists()
    replayed = yaml.safe_load((best_run / "recipe.yaml").read_text())
    assert replayed["train"]["lr"] == result.best_params["train.lr"]


def test_a_killed_workers_trial_is_reaped_and_retried(tmp_path, tiny_model_dir, chat_files):
    """kill -9 a worker mid-trial: the next worker fails the stale trial (no heartbeat) and
    runs it again with the same values."""
    import signal
    import time

    import optuna

    recipe_path = tmp_path / "r.yaml"
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=random", "tune.pruner=none",
                         "tune.heartbeat_seconds=1", "train.max_steps=300")
    recipe_path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "tunesmith", "tune", str(recipe_path), "--storage", storage,
               "--study", "reap", "--trials", "1"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert first.poll() is None, first.stderr.read()[-2000:]
        try:
            trials = optuna.load_study(study_name="reap", storage=storage).trials
        except KeyError:  # the study is not created yet
            trials = []
        if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            break
        time.sleep(0.2)
    time.sleep(2)  # well into training
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(3)  # past the grace period (2 heartbeats)
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    trials = optuna.load_study(study_name="reap", storage=storage).trials
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    retried = next(t for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert retried.params == failed.params


def test_two_local_workers_share_the_study_each_on_its_device(tmp_path, tiny_model_dir, chat_files):
    """`tune --processes 2`: two worker processes on this machine (tune.devices: both the CPU
    here; on GPUs each its own, through CUDA_VISIBLE_DEVICES) split the trials of one study."""
    from tunesmith.models.device import pinned
    from tunesmith.tune.workers import shares

    recipe_file = tmp_path / "tune.yaml"
    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=random", "tune.trials=4",
                         "tune.pruner=none", "tune.devices=[cpu, cpu]")
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    done = subprocess.run([sys.executable, "-m", "tunesmith", "tune", str(recipe_file), "--processes", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((recipe.run_dir / "tune" / "trials.csv").open()))
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    assert len({r["user_attrs_worker"] for r in rows}) == 2  # both workers trained
    assert {r["user_attrs_device"] for r in rows} == {"cpu"}
    assert len({r["params_train.lr"] for r in rows}) == 4  # each worker samples from its own seed
    assert read_json(recipe.run_dir / "tune" / "summary.json")["completed"] == 4
    assert shares(5, 2) == [3, 2] and shares(None, 3) == [None] * 3
    assert pinned("cuda:3") == {"CUDA_VISIBLE_DEVICES": "3"} and pinned("cpu") == {"CUDA_VISIBLE_DEVICES": ""}


def test_a_trial_that_does_not_fit_memory_is_recorded_with_its_fix(tmp_path, tiny_model_dir, chat_files,
                                                                   monkeypatch):
    """train.fit refuses the big-batch trial before loading: it is recorded failed (out_of_memory)
    with the settings that would fit, and the study goes on to the trial that fits."""
    from tunesmith.train import fit
    from tunesmith.tune.objective import _is_oom

    recipe = tune_recipe(tmp_path, tiny_model_dir, chat_files, "tune.strategy=grid", "tune.trials=2",
                         "tune.pruner=none", "train.max_length=1024", "train.gradient_checkpointing=true",
                         "tune.space={train.batch_size: {type: categorical, choices: [1, 4096]}}")
    from tunesmith.models.memory import training_memory

    entry = fit.model_entry(recipe, str(tiny_model_dir))
    # room for one row of 1,024 tokens: the trials' rows are ~30 tokens, so batch 1 fits and 4,096 not
    between = training_memory(entry, fit.step_for(recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"batch_size": 1})}), entry, "cpu")).total
    monkeypatch.setattr(fit, "free_memory", lambda device: between)
    result = tune.run(recipe, open_run(recipe))
    rows = {int(float(r["params_train.batch_size"])): r
            for r in csv.DictReader((recipe.run_dir / "tune" / "trials.csv").open())}
    assert rows[1]["state"] == "COMPLETE" and result.best_params == {"train.batch_size": 1}
    assert rows[4096]["state"] == "FAIL" and rows[4096]["user_attrs_failure"] == "out_of_memory"
    assert "Settings that fit" in rows[4096]["user_attrs_fix"]
    import torch

    assert _is_oom(torch.OutOfMemoryError("CUDA out of memory")) and not _is_oom(ValueError("x"))
