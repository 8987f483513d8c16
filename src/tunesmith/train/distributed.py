"""Distributed training: `tunesmith train RECIPE --processes N [--accelerate-config FILE]`.

The launching process runs the data stage once and picks the checkpoint to resume from; then
`accelerate launch` starts N worker processes (torch.distributed: gloo on CPUs, NCCL on GPUs;
DDP by default, FSDP or DeepSpeed from an accelerate config file). Each worker runs the same
train stage (`train.train_here`) on the prepared splits: Trainer shards every global batch
across the workers (batch_size rows per worker), averages the gradients, and gathers the
logged loss and token counts. Only rank 0 writes the run directory (the log, checkpoints, the
model, the summary); the launching process commits it as one transaction, as for one process.

    python -m tunesmith.train.distributed PAYLOAD.json     (what each worker runs)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.artifacts import TrainSummary, load
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(payload: Path, processes: int, accelerate_config: str | None) -> list[str]:
    """`accelerate launch` of this module's worker: N processes on this machine, on loopback."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(free_port())]
    if accelerate_config:  # FSDP / DeepSpeed / mixed precision as that file says
        if not Path(accelerate_config).is_file():
            raise ConfigError(f"--accelerate-config {accelerate_config}: no such file. Write one with "
                              "`accelerate config --config_file FILE` (see README, Scaling out).")
        command += ["--config_file", accelerate_config]
    else:  # plain DDP; on a machine without GPUs torch.distributed uses gloo on the CPU
        command += ["--multi_gpu", "--dynamo_backend", "no", "--mixed_precision", "no"]
    return command + ["-m", "tunesmith.train.distributed", str(payload)]


def launch(recipe: Recipe, run_dir: RunDir, checkpoint: Path | None, processes: int,
           accelerate_config: str | None = None) -> Any:
    """Train in `processes` workers; the TrainResult rank 0 recorded in the run's summary."""
    from tunesmith.train import TrainResult

    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as tmp:
        payload = Path(tmp) / "payload.json"
        payload.write_text(json.dumps({
            "recipe": recipe.model_dump(mode="json"), "root": str(run_dir.root),
            "home": str(run_dir.home) if run_dir.home else None,
            "checkpoint": str(checkpoint) if checkpoint else None}))
        done = subprocess.run(launch_command(payload, processes, accelerate_config),
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        if errors:  # a worker refused the input: its message, as a one-process run would give it
            raise TunesmithError(errors[0].removeprefix("error: "))
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise TunesmithError(f"distributed training failed (the workers exited with {done.returncode}); "
                             f"the run directory is as it was. Last lines of their output:\n{tail}")
    summary = load(TrainSummary, run_dir.train_summary)
    return TrainResult(run_dir.model, summary.steps, summary.train_loss, summary.tokens_per_second,
                       summary.runtime_seconds, summary.final_eval_loss, summary.guards)


def worker(payload_path: str) -> None:
    """One worker: the train stage on the prepared data, as rank $RANK of $WORLD_SIZE."""
    from tunesmith.train import train_here

    payload = json.loads(Path(payload_path).read_text())
    recipe = Recipe.model_validate(payload["recipe"])
    run_dir = RunDir(Path(payload["root"]), home=Path(payload["home"]) if payload["home"] else None)
    train_here(recipe, run_dir, Path(payload["checkpoint"]) if payload["checkpoint"] else None)


if __name__ == "__main__":
    try:
        worker(sys.argv[1])
    except TunesmithError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
