"""`tunesmith train --processes 2`: two worker processes (accelerate, DDP over gloo on the CPU)
train on disjoint halves of each global batch, and the run matches one process at the same
global batch; the data stage runs once, in the launching process, and rank 0 alone writes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tests.conftest import write_jsonl


def tiny_recipe(tmp_path, tiny_model_dir) -> str:
    rows = [{"instruction": f"Add {i} and {i + 1}", "input": "", "output": f"The sum is {2 * i + 1}."}
            for i in range(80)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    # fp32 and no LoRA dropout: the two runs then do the same arithmetic up to summation order
    recipe.write_text(
        f"name: one\nmodel: {{name: {tiny_model_dir}}}\ndata: {{train: {train}, val_fraction: 0.1, "
        f"test_fraction: 0, dedup: {{near: false}}}}\n"
        f"train: {{lr: 0.01, epochs: 2, logging_steps: 1, mixed_precision: 'no', lora: {{dropout: 0}}}}\n"
        f"monitor: {{enabled: false}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    return str(recipe)


def train(recipe: str, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", recipe, *extra],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged(run) -> list[tuple]:
    return [(e["step"], e.get("loss"), e.get("eval_loss"), e["tokens_seen"])
            for e in map(json.loads, (run / "train" / "log.jsonl").read_text().splitlines())
            if "loss" in e or "eval_loss" in e]


def test_two_processes_train_as_one_at_the_same_global_batch(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    train(recipe, "train.batch_size=8")
    two = train(recipe, "name=two", "train.batch_size=4", "--processes", "2")
    one_run, two_run = tmp_path / "runs" / "one", tmp_path / "runs" / "two"

    one_log, two_log = logged(one_run), logged(two_run)
    steps = [s for s, loss, _, _ in one_log if loss is not None]
    assert steps == list(range(1, 19))  # 72 training rows / 8 = 9 steps per epoch, 2 epochs
    # each step saw the same rows (token counts, summed over both processes) ...
    assert [t for *_, t in two_log] == [t for *_, t in one_log]
    # ... and the same loss: training loss every step, validation loss at each epoch's end
    for (step, loss, val, _), (_, loss2, val2, _) in zip(one_log, two_log, strict=True):
        assert (loss2 or val2) == pytest.approx(loss or val, rel=1e-5), f"step {step}"
    one_w, two_w = (load_file(r / "model" / "adapter_model.safetensors") for r in (one_run, two_run))
    for name, tensor in one_w.items():
        assert (two_w[name] - tensor).abs().max() < 1e-5, name

    # one writer: every step logged once, one summary, no checkpoints or staging left
    assert len({s for s, *_ in two_log}) == len(set(steps))
    summary = json.loads((two_run / "train" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 18
    assert not (two_run / ".work").exists() and not any((two_run / ".staging").glob("*"))
    # the data stage ran once, in the launching process (its summary printed once)
    assert two.stdout.count("splits: train") == 1, two.stdout


@pytest.mark.parametrize(("name", "kind"), [("fsdp", "FSDP"), ("deepspeed-zero3", "DEEPSPEED")])
def test_the_gpu_configs_are_accepted_by_accelerate(name, kind):
    """The README's FSDP / DeepSpeed configs (GPUs only, not run here) parse as accelerate configs."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parents[1] / "recipes" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"


def fsdp_config(tmp_path) -> str:
    """The README's FSDP2 config (recipes/accelerate/fsdp.yaml) for 2 CPU processes: the same
    sharding, state dict type and rank-0 loading, fp32."""
    import yaml

    shipped = Path(__file__).parents[1] / "recipes" / "accelerate" / "fsdp.yaml"
    config = yaml.safe_load(shipped.read_text())
    config |= {"num_processes": 2, "use_cpu": True, "mixed_precision": "no"}
    path = tmp_path / "fsdp-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def adapter(run) -> dict:
    return load_file(run / "model" / "adapter_model.safetensors")


def test_fsdp2_on_two_processes_trains_saves_and_resumes_to_the_ddp_adapter(tmp_path, tiny_model_dir):
    """FSDP2 (accelerate's fully_shard path, over gloo: TUNESMITH_FSDP_ON_CPU lets accelerate take
    it on CPU workers) ends with the adapter DDP ends with; killed after its first sharded
    checkpoint, --resume finishes with the same adapter as the run that was never stopped."""
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    steps = ["train.batch_size=4", "train.max_steps=30", "train.save_steps=5"]
    train(recipe, "name=ddp", *steps, "--processes", "2")
    fsdp = [*steps, "--processes", "2", "--accelerate-config", fsdp_config(tmp_path)]
    env = {**os.environ, "TUNESMITH_FSDP_ON_CPU": "1"}
    whole = run_cli(recipe, "name=fsdp", *fsdp, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    runs = tmp_path / "runs"
    ddp_w, fsdp_w = adapter(runs / "ddp"), adapter(runs / "fsdp")
    assert ddp_w.keys() == fsdp_w.keys() and len(ddp_w) == 28  # 2 layers x 7 linear x (A, B), whole
    for name, tensor in ddp_w.items():
        assert fsdp_w[name].shape == tensor.shape, name  # gathered, not one rank's shard
        assert (fsdp_w[name] - tensor).abs().max() < 1e-5, name
    assert json.loads((runs / "fsdp" / "train" / "summary.json").read_text())["processes"] == 2

    # kill -9 the command once a sharded checkpoint is complete: its workers die with it
    checkpoints = runs / "cut" / ".work" / "checkpoints"
    command = [sys.executable, "-m", "tunesmith", "train", recipe, "name=cut", *fsdp]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    process.kill()
    process.wait()
    shard = next(checkpoints.glob("checkpoint-*"))
    assert (shard / "pytorch_model_fsdp_0").is_dir(), sorted(p.name for p in shard.iterdir())
    time.sleep(1)
    assert not (runs / "cut" / "model").exists()
    resumed = run_cli(recipe, "name=cut", *fsdp, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((runs / "cut" / "train" / "summary.json").read_text())
    assert summary["resumed_from"].startswith("checkpoint-") and summary["steps"] == 30
    for name, tensor in adapter(runs / "cut").items():
        assert (tensor - fsdp_w[name]).abs().max() < 1e-5, name


def run_cli(recipe: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", "train", recipe, *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def test_eval_in_two_processes_gives_the_same_predictions(tmp_path, tiny_model_dir, chat_files):
    """`eval --processes 2`: generation shared out to two workers, each with its own copy of the
    run's model; every answer (fine-tuned and base, test set and probes) as one process gives."""
    recipe = tmp_path / "e.yaml"
    recipe.write_text(
        f"name: ev\nmodel: {{name: {tiny_model_dir}}}\ndata: {{train: {chat_files['train']}, "
        f"test: {chat_files['test']}}}\ntrain: {{max_steps: 20, lr: 0.01, batch_size: 4}}\n"
        f"eval: {{max_new_tokens: 6, bias: {{enabled: false}}}}\n"
        f"monitor: {{enabled: false}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    run = tmp_path / "runs" / "ev"
    assert subprocess.run([sys.executable, "-m", "tunesmith", "run", str(recipe)], capture_output=True,
                          timeout=600).returncode == 0
    one = (run / "eval" / "predictions.jsonl").read_text()
    summary_one = json.loads((run / "eval" / "summary.json").read_text())
    two = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(recipe), "--processes", "2"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (run / "eval" / "predictions.jsonl").read_text() == one
    summary_two = json.loads((run / "eval" / "summary.json").read_text())
    assert summary_two["sets"] == summary_one["sets"]
    assert summary_two["forgetting"] == summary_one["forgetting"]
    assert (summary_one["generation_processes"], summary_two["generation_processes"]) == (1, 2)
