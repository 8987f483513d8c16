"""Many worker processes, one model: where each worker puts it, and how a sharded model (FSDP2,
DeepSpeed ZeRO-3) is loaded and saved.

`accelerate launch` starts the workers with the launch's choices in their environment
(LOCAL_RANK, ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED, FSDP_CPU_RAM_EFFICIENT_LOADING, ...).
A worker reads them here, before any weight is loaded:

    placement()        this worker's device (cuda:LOCAL_RANK) and the sharding it was launched with
    prepare(placed)    the distributed state built before `from_pretrained`: the process group
                       (so that FSDP's rank-0-only loading acts: rank 0 reads the weights, the
                       others build on the meta device and receive them when sharded) and, for
                       ZeRO-3, DeepSpeed's config registered (so that transformers partitions
                       the weights as it loads them, never a whole copy per process)
    gathered(trainer)  the final weights, gathered once onto rank 0 through the library's own
                       sharding-aware path (an adapter's trained weights only: a 70B base is
                       never gathered to save a 40 MB adapter)
    released(weight)   whether a parameter is only a shard here (ZeRO-3 releases it to size 0
                       outside its module's forward; FSDP2 keeps a DTensor)

Checkpoints (`train.save_steps`) are Trainer's own: under FSDP each rank writes its shard
(accelerate's `save_fsdp_model`, torch.distributed.checkpoint), and `--resume` loads them back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    device: str
    """Where this process's model lives: cpu, mps, or cuda:LOCAL_RANK under a launch."""
    sharding: str | None = None
    """fsdp or deepspeed when the launch shards the model (the engine places it), else None."""
    local_rank: int = 0

    @property
    def skeleton(self) -> bool:
        """Whether this process builds the model on the meta device instead of reading it: under
        FSDP with fsdp_cpu_ram_efficient_loading, every rank but 0 (accelerate broadcasts rank 0's
        weights into the shards), so a 70B model is read once, not once per GPU."""
        return (self.sharding == "fsdp" and _flag("FSDP_CPU_RAM_EFFICIENT_LOADING")
                and int(os.environ.get("RANK", "0")) != 0)

    @property
    def moves(self) -> bool:
        """Whether the loader puts the model on `device` itself (not when FSDP / DeepSpeed does)."""
        return self.sharding is None


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1")


def sharding() -> str | None:
    """The sharding `accelerate launch` started this process with."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return None


def machines() -> int:
    """Machines in this launch (torchrun's WORLD_SIZE over LOCAL_WORLD_SIZE); 1 outside one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))))


def placement(device: str) -> Placement:
    """`device` (models.device.resolve_device) for this process: under a launch on GPUs, the
    GPU of its LOCAL_RANK, made the current one, so that nothing of this rank lands on cuda:0."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        import torch

        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return Placement(device, sharding(), local_rank)


def prepare(placed: Placement) -> Any:
    """The distributed state, before the model is loaded (see the module's docstring); returns
    what must stay alive while loading (DeepSpeed's config), or None."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    from accelerate import PartialState

    PartialState()  # the process group: gloo on CPUs, NCCL on GPUs
    if placed.sharding == "deepspeed" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin()  # from the launch's environment
        if plugin.zero3_init_flag:
            plugin.set_deepspeed_weakref()  # transformers' is_deepspeed_zero3_enabled() is now true
        return plugin
    return None


def released(weight: Any) -> bool:
    """Whether `weight` is only this rank's shard: ZeRO-3 releases a parameter to an empty tensor
    outside its module's forward; FSDP2 stores a DTensor. Code that reads a weight outside the
    module's forward (the fused head) must not use such a one."""
    if getattr(weight, "ds_id", None) is not None or weight.numel() == 0:
        return True
    from torch.distributed.tensor import DTensor

    return isinstance(weight, DTensor)


def gathered(trainer: Any, adapter_only: bool) -> dict[str, Any] | None:
    """The trained model's full state dict on rank 0 (None elsewhere) when the model is sharded,
    gathered through FSDP's / DeepSpeed's own path; every rank must call it. None as well when
    nothing is sharded (the model saves its own weights)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        import torch
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(trainer.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapter_only))
        return state if torch.distributed.get_rank() == 0 else None
    if getattr(trainer, "is_deepspeed_enabled", False) and trainer.deepspeed is not None:
        engine = trainer.deepspeed
        if engine.zero_optimization_stage() == 3:  # untested here: DeepSpeed needs CUDA
            state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=adapter_only)
            return state if trainer.accelerator.is_main_process else None
    return None
