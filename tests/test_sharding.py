"""Each worker's model on its own device, a sharded model loaded as its engine expects, the fused
head kept off weights ZeRO-3 has released, and the launch command for many machines."""


import pytest
import torch

from tunesmith.errors import ConfigError
from tunesmith.models import loading
from tunesmith.recipe import ModelConfig
from tunesmith.train import sharding
from tunesmith.train.distributed import Launch, launch_command, worker_failure


@pytest.fixture
def launched(monkeypatch):
    """This process as local rank 1 of an accelerate launch on a 2-GPU machine (a spy GPU)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    for name, value in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        monkeypatch.delenv(name, raising=False)
    return chosen


class SpyModel:
    """What from_pretrained returned: records where the loader moved it."""

    def __init__(self) -> None:
        self.moved_to: list[str] = []

    def to(self, device):
        self.moved_to.append(device)
        return self


@pytest.fixture
def spy_load(monkeypatch, tiny_model_dir):
    calls = []

    from transformers import AutoModelForCausalLM

    class Auto:
        from_config = AutoModelForCausalLM.from_config

        @staticmethod
        def from_pretrained(location, **kwargs):
            calls.append(kwargs)
            return SpyModel()

    monkeypatch.setattr(loading.CausalLM, "auto_class", lambda self: Auto)
    return calls


def test_each_rank_loads_onto_its_own_gpu_not_cuda_0(launched, spy_load, tiny_model_dir):
    placed = sharding.placement("cuda")
    assert placed.device == "cuda:1" and launched == [1]  # made current before anything loads
    assert placed.moves and not placed.skeleton
    model = loading.load_model(ModelConfig(name=str(tiny_model_dir)), str(tiny_model_dir), placed.device,
                               move=placed.moves, skeleton=placed.skeleton)
    assert model.moved_to == ["cuda:1"]
    # QLoRA: bitsandbytes places the 4-bit weights, on this rank's GPU too
    assert sharding.placement("cpu").device == "cpu"  # CPU workers share the one CPU device


def test_under_fsdp_the_model_is_not_moved_and_only_rank_0_reads_weights(
        launched, spy_load, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    placed = sharding.placement("cuda")
    assert placed.sharding == "fsdp" and not placed.moves and placed.skeleton
    cfg = ModelConfig(name=str(tiny_model_dir))
    skeleton = loading.load_model(cfg, str(tiny_model_dir), placed.device, move=False, skeleton=True)
    assert spy_load == []  # no weight read on rank 1
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert {b.device.type for b in skeleton.buffers()} == {"cpu"}  # rotary frequencies computed, real
    monkeypatch.setenv("RANK", "0")
    first = sharding.placement("cuda")
    assert not first.skeleton
    model = loading.load_model(cfg, str(tiny_model_dir), first.device, move=first.moves)
    assert model.moved_to == [] and len(spy_load) == 1  # rank 0 reads; FSDP moves the shards


def test_deepspeed_launch_is_recognised(launched, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert sharding.placement("cuda").sharding == "deepspeed" and not sharding.placement("cuda").moves


def test_the_fused_head_is_off_when_zero3_has_released_the_weight(tiny_model_dir):
    """ZeRO-3 leaves an empty tensor (with a ds_id) outside the head's forward: the fused loss
    would divide by its width (ZeroDivisionError) or read nothing; the plain loss is taken."""
    from transformers import AutoModelForCausalLM

    from tunesmith.train.sft_backend import answer_loss, fused_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert fused_head(model)
    whole = model.lm_head.weight
    model.lm_head.weight = torch.nn.Parameter(torch.empty(0))
    model.lm_head.weight.ds_id = 7
    assert not fused_head(model)
    assert sharding.released(model.lm_head.weight) and not sharding.released(whole)
    model.lm_head.weight = whole
    ids = torch.tensor([[5, 6, 7, 8]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.tensor([[-100, -100, 7, 8]])}
    plain, _ = answer_loss(model, batch, attention_mask=True, fused=False)
    fused, _ = answer_loss(model, batch, attention_mask=True, fused=True)
    assert plain.item() == pytest.approx(fused.item(), rel=1e-5)


def test_one_machine_launches_on_loopback(tmp_path):
    command = launch_command(tmp_path / "p.json", Launch(processes=2))
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--num_machines") + 1] == "1"
    assert command[command.index("--main_process_ip") + 1] == "127.0.0.1"


def test_many_machines_count_processes_over_all_of_them(tmp_path):
    command = launch_command(tmp_path / "p.json", Launch(processes=8, machines=2, machine_rank=1,
                                                         main_address="10.0.0.1", main_port=29400))
    assert command[command.index("--num_processes") + 1] == "16"  # accelerate counts all machines
    assert command[command.index("--machine_rank") + 1] == "1"
    assert command[command.index("--main_process_ip") + 1] == "10.0.0.1"
    assert command[command.index("--main_process_port") + 1] == "29400"


def test_an_accelerate_config_keeps_its_own_machines_and_address(tmp_path):
    config = tmp_path / "two-machines.yaml"
    config.write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nmachine_rank: 1\n"
                      "main_process_ip: 10.0.0.1\nmain_process_port: 29400\n")
    command = launch_command(tmp_path / "p.json", Launch(processes=4, accelerate_config=str(config)))
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port"):
        assert flag not in command  # the file's values stand
    assert command[command.index("--config_file") + 1] == str(config)


@pytest.mark.parametrize(("launch", "message"), [
    (Launch(processes=2, machines=2), "needs --main-address"),
    (Launch(processes=2, machines=2, machine_rank=2, main_address="h"), "must be 0 to 1"),
    (Launch(processes=2, accelerate_config="nope.yaml"), "no such file"),
])
def test_an_impossible_launch_is_refused_in_one_line(tmp_path, launch, message):
    with pytest.raises(ConfigError, match=message):
        launch_command(tmp_path / "p.json", launch)


def test_a_workers_failure_is_reported_from_the_rank_that_caused_it():
    stderr = "\n".join([
        "[rank0]: Traceback (most recent call last):", "[rank0]: RuntimeError: Connection closed by peer",
        "[rank1]: Traceback (most recent call last):", "[rank1]: ValueError: the real cause",
        "Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 1)"])
    assert worker_failure(stderr) == ["[rank1]: Traceback (most recent call last):",
                                      "[rank1]: ValueError: the real cause"]


def test_machines_are_read_from_the_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert sharding.machines() == 2
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert sharding.machines() == 1


