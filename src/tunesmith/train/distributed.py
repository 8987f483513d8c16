"""Distributed training: `tunesmith train RECIPE --processes N [--accelerate-config FILE]
[--machines M --machine-rank R --main-address HOST [--main-port P]]`.

The launching process runs the data stage once and picks the checkpoint to resume from; then
`accelerate launch` starts N worker processes on this machine (torch.distributed: gloo on CPUs,
NCCL on GPUs; DDP by default, FSDP or DeepSpeed from an accelerate config file). Each worker
runs the same train stage (`train.train_here`) on the prepared splits: Trainer shards every
global batch across the workers (batch_size rows per worker), averages the gradients, and
gathers the logged loss and token counts. Each worker loads onto its own device, sharded models
load, save and resume through their engine's own path (sharding.py). Rank 0 alone writes the
model, log and summary; the launching process commits the run as one transaction.

Many machines: the same command on each, with its --machine-rank; every machine prepares the same
splits (the data stage is deterministic) and keeps its ranks' checkpoint shards in its own
run directory's work area (resume with --resume on every machine). Machine 0's run directory is
the run; the others are left as they were. Values an accelerate config file sets (machines,
rank, address) are used as it sets them, unless given on the command line.

    python -m tunesmith.train.distributed PAYLOAD.json     (what each worker runs)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.artifacts import TrainSummary, load
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.interrupts import die_with_parent
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Launch:
    """Where the workers run: `--processes` on each machine, and the machines (None: as the
    accelerate config file says, or one machine on loopback without a file)."""
    processes: int = 1
    """Worker processes on this machine (one per GPU)."""
    accelerate_config: str | None = None
    machines: int | None = None
    machine_rank: int | None = None
    main_address: str | None = None
    main_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.processes > 1 or (self.machines or 1) > 1

    @property
    def writes_run(self) -> bool:
        """Machine 0 writes the run; the others only train."""
        return not self.machine_rank


def check_launch(launch: Launch) -> None:
    """Refuse an impossible launch before any work, in one line."""
    if launch.accelerate_config and not Path(launch.accelerate_config).is_file():
        raise ConfigError(f"--accelerate-config {launch.accelerate_config}: no such file. Write one with "
                          "`accelerate config --config_file FILE` (see README, Scaling out).")
    machines = launch.machines or 1
    if launch.machine_rank is not None and not 0 <= launch.machine_rank < machines:
        raise ConfigError(f"--machine-rank {launch.machine_rank}: must be 0 to {machines - 1} "
                          f"for --machines {machines}.")
    if machines > 1 and not launch.main_address and not launch.accelerate_config:
        raise ConfigError(f"--machines {machines} needs --main-address: the address of machine 0, which "
                          "every machine can reach (or an accelerate config file that sets main_process_ip).")


def launch_command(payload: Path, launch: Launch) -> list[str]:
    """`accelerate launch` of this module's worker. accelerate counts processes over all machines;
    what the command line leaves out comes from the config file, or else one machine on loopback."""
    check_launch(launch)
    machines = launch.machines or 1
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(launch.processes * machines)]
    if launch.machines is not None or not launch.accelerate_config:
        command += ["--num_machines", str(machines)]
    if launch.machine_rank is not None or (machines > 1 and not launch.accelerate_config):
        command += ["--machine_rank", str(launch.machine_rank or 0)]
    if launch.main_address or not launch.accelerate_config:
        command += ["--main_process_ip", launch.main_address or "127.0.0.1"]
    if launch.main_port or not launch.accelerate_config:
        command += ["--main_process_port", str(launch.main_port or (29500 if machines > 1 else free_port()))]
    if launch.accelerate_config:  # FSDP / DeepSpeed / mixed precision as that file says
        command += ["--config_file", launch.accelerate_config]
    else:  # plain DDP; on a machine without GPUs torch.distributed uses gloo on the CPU
        command += ["--multi_gpu", "--dynamo_backend", "no", "--mixed_precision", "no"]
    return command + ["-m", "tunesmith.train.distributed", str(payload)]


def launch(recipe: Recipe, run_dir: RunDir, checkpoint: Path | None, launch: Launch) -> Any:
    """Train in the launch's workers; the TrainResult rank 0 recorded in the run's summary (on a
    machine of rank > 0, which writes no summary: the steps trained, from its checkpoints)."""
    from tunesmith.train import TrainResult

    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as tmp:
        payload = Path(tmp) / "payload.json"
        payload.write_text(json.dumps({
            "recipe": recipe.model_dump(mode="json"), "root": str(run_dir.root),
            "home": str(run_dir.home) if run_dir.home else None,
            "checkpoint": str(checkpoint) if checkpoint else None}))
        done = subprocess.run(launch_command(payload, launch), stdin=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        if errors:  # a worker refused the input: its message, as a one-process run would give it
            raise TunesmithError(errors[0].removeprefix("error: "))
        tail = "\n".join(worker_failure(done.stderr))
        raise TunesmithError(f"distributed training failed (the workers exited with {done.returncode}); "
                             f"the run directory is as it was. Last lines of their output:\n{tail}")
    if not launch.writes_run:
        return TrainResult(run_dir.model, 0, None, 0.0, 0.0)
    summary = load(TrainSummary, run_dir.train_summary)
    return TrainResult(run_dir.model, summary.steps, summary.train_loss, summary.tokens_per_second,
                       summary.runtime_seconds, summary.final_eval_loss, summary.guards)


def worker_failure(stderr: str, lines: int = 12) -> list[str]:
    """The lines that say why the workers failed: the end of the traceback of the rank torchrun
    names as the root cause (the others' tracebacks only report a peer that went away)."""
    import re

    output = stderr.strip().splitlines()
    cause = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", stderr, re.S)
    prefix = f"[rank{cause.group(1)}]:" if cause else "[rank"
    traced = [line for line in output if line.startswith(prefix)]
    return (traced or output)[-lines:]


def worker(payload_path: str) -> None:
    """One worker: the train stage on the prepared data, as rank $RANK of $WORLD_SIZE."""
    from tunesmith.train import train_here

    payload = json.loads(Path(payload_path).read_text())
    recipe = Recipe.model_validate(payload["recipe"])
    run_dir = RunDir(Path(payload["root"]), home=Path(payload["home"]) if payload["home"] else None)
    train_here(recipe, run_dir, Path(payload["checkpoint"]) if payload["checkpoint"] else None)




def fsdp_on_cpu() -> None:
    """TUNESMITH_FSDP_ON_CPU=1 (tests and development only): accelerate chooses FSDP only for
    accelerators and quietly runs DDP on CPU processes; this lets its FSDP2 path (fully_shard over
    gloo, sharded checkpoints, the gathered save) run on CPU workers, so that CI tests the code
    a GPU launch runs. Without the variable nothing changes."""
    if os.environ.get("TUNESMITH_FSDP_ON_CPU") != "1":
        return
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    try:
        die_with_parent()
        fsdp_on_cpu()
        worker(sys.argv[1])
    except TunesmithError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

