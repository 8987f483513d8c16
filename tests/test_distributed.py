"""`tunesmith train --processes 2`: two worker processes (accelerate, DDP over gloo on the CPU)
train on disjoint halves of each global batch, and the run matches one process at the same
global batch; the data stage runs once, in the launching process, and rank 0 alone writes."""

import json
import subprocess
import sys

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
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parents[1] / "recipes" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
