"""The memory check before loading (train.fit) and precision by device, on faked GPUs: a 24 GB
card refuses an 8B-shaped default recipe before any weight is read and accepts the fix it names;
a T4 (bf16 only emulated) trains in fp16 over fp32 weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tunesmith import pipeline, train
from tunesmith.artifacts import TrainSummary, load
from tunesmith.errors import ConfigError
from tunesmith.models import device as device_module
from tunesmith.models.catalog import find
from tunesmith.models.memory import GB, Step, embedding_parameters, training_memory
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run
from tunesmith.train import fit

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
            "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5}
"""Llama-3.1-8B's config.json numbers."""


@pytest.fixture
def llama_8b_dir(tmp_path, tiny_model_dir):
    """An 8B-shaped model directory whose weights file is not a model: loading it would fail."""
    path = tmp_path / "llama-8b-shaped"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_8B))
    (path / "model.safetensors").write_bytes(b"not weights")
    for name in tiny_model_dir.iterdir():  # the tiny model's tokenizer and chat template
        if name.suffix != ".safetensors" and name.name not in ("config.json", "generation_config.json"):
            shutil.copy(name, path / name.name)
    return path


@pytest.fixture
def a_24gb_gpu(monkeypatch):
    """CUDA as tunesmith sees it: a 24 GB card computing bf16 natively (an L4 / A10 / 4090)."""
    monkeypatch.setattr(train, "resolve_device", lambda cfg: "cuda")
    monkeypatch.setattr(device_module, "cuda_native_bf16", lambda: True)
    monkeypatch.setattr(fit, "free_memory", lambda device: 24 * GB if device == "cuda" else None)

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(train, "load_model", no_loading)


@pytest.fixture
def long_files(tmp_path):
    """Answers of 1,500 characters: with the tiny tokenizer (a token a character) the longest row
    reaches the default train.max_length of 1,024 tokens, as real documents do."""
    from conftest import write_jsonl

    words = ["red", "blue", "green", "black", "white", "pink", "grey"]
    rows = [{"instruction": f"describe colour {i}",
             "output": " ".join(f"{words[(i * j) % 7]}{j}" for j in range(1, 260))} for i in range(16)]
    return {"train": write_jsonl(tmp_path / "long.jsonl", rows),
            "test": write_jsonl(tmp_path / "long-test.jsonl", rows[:2])}


def _recipe(tmp_path, model_dir, chat_files, *extra):
    return load_recipe(None, [f"model.name={model_dir}", f"data.train={chat_files['train']}",
                              f"data.test={chat_files['test']}", f"output.dir={tmp_path / 'runs'}",
                              "name=big", *extra])


def test_the_8b_parameter_count_from_its_config():
    assert fit.parameters_from_config(LLAMA_8B) == pytest.approx(8.03e9, rel=0.01)


def test_an_8b_default_recipe_is_refused_on_24gb_before_loading(tmp_path, llama_8b_dir, long_files,
                                                                a_24gb_gpu):
    chat_files = long_files
    recipe = _recipe(tmp_path, llama_8b_dir, chat_files, "data.filters.max_tokens=100000")
    with pytest.raises(ConfigError) as refused:
        pipeline.fine_tune(recipe)
    message = str(refused.value)
    assert "has 24.0 GiB free" in message and "Nothing was loaded" in message
    need = float(message.split("needs ~")[1].split(" GiB")[0])
    assert need > 24 and "batch 8 x 1024 tokens" in message  # the longest rows, no checkpointing
    assert "weights 15.0" in message  # 8B in bf16
    fix = message.split("Settings that fit: ")[1].split(" (~")[0]
    assert fix == "train.gradient_checkpointing=true"  # the cheapest that fits comes first
    assert not open_run(recipe).root.exists()  # the run directory was not even created

    # the fix, as the message gives it on the command line, is accepted
    fixed = _recipe(tmp_path, llama_8b_dir, chat_files, *fix.split())
    assert fit.fit_to_memory(fixed, "cuda", str(llama_8b_dir)) is fixed
    # and train.fit=auto applies it itself
    auto = _recipe(tmp_path, llama_8b_dir, chat_files, "train.fit=auto")
    applied = fit.fit_to_memory(auto, "cuda", str(llama_8b_dir))
    assert applied.train.gradient_checkpointing is True and applied.train.batch_size == 8


def test_a_longer_context_needs_a_stronger_fix(tmp_path, llama_8b_dir, chat_files, a_24gb_gpu):
    recipe = _recipe(tmp_path, llama_8b_dir, chat_files, "train.max_length=8192", "train.fit=auto")
    applied = fit.fit_to_memory(recipe, "cuda", str(llama_8b_dir))
    assert applied.train.batch_size == 1 and applied.train.grad_accum == 8  # the same effective batch
    assert applied.train.gradient_checkpointing is True


def test_nothing_fits_names_a_smaller_model(tmp_path, llama_8b_dir, chat_files, monkeypatch, a_24gb_gpu):
    monkeypatch.setattr(fit, "free_memory", lambda device: 3 * GB)
    with pytest.raises(ConfigError, match="No setting of this model fits: choose a smaller one"):
        fit.fit_to_memory(_recipe(tmp_path, llama_8b_dir, chat_files), "cuda", str(llama_8b_dir))


def test_auto_fit_is_recorded_in_the_runs_recipe(tmp_path, tiny_model_dir, long_files, monkeypatch):
    """A recipe too big for the (faked) free memory trains with the fix, and recipe.yaml says so."""
    recipe = _recipe(tmp_path, tiny_model_dir, long_files, "train.fit=auto", "train.max_steps=2",
                     "train.max_length=1024", "data.filters.max_tokens=100000")
    entry = fit.model_entry(recipe, str(tiny_model_dir))
    step = fit.step_for(recipe, entry, "cpu")
    checkpointed = training_memory(entry, step, checkpointing=True).total
    between = (checkpointed + training_memory(entry, step).total) / 2
    monkeypatch.setattr(fit, "free_memory", lambda device: between)
    pipeline.fine_tune(recipe)
    recorded = load_recipe(open_run(recipe).recipe)
    assert recorded.train.gradient_checkpointing is True and recorded.train.fit == "auto"
    assert load(TrainSummary, open_run(recipe).train_summary).steps == 2


def test_estimator_corrections():
    llama = find("meta-llama/Llama-3.1-8B-Instruct")
    base = Step(method="lora", seq=32768, batch=1, precision="bf16", device="cuda")
    plain, fused = training_memory(llama, base), training_memory(llama, base, fused_head=True)
    assert plain.logits > 60 * GB and fused.logits < 2 * GB  # 32k x 128k logits, or a chunk of them
    checkpointed = training_memory(llama, base, checkpointing=True)
    # per layer checkpointing keeps every layer's input (32 x 4096 x 2 bytes a token) + one layer
    per_layer = training_memory(llama, base).activations / llama.layers
    assert checkpointed.activations == pytest.approx(32768 * 32 * 4096 * 2 + per_layer)
    dropout = training_memory(llama, base, lora_dropout=0.05)
    assert dropout.activations > plain.activations  # the mask and the dropped copy, only with dropout
    qlora = training_memory(llama, base, method="qlora")
    embeddings = embedding_parameters(llama)
    assert qlora.weights == pytest.approx((llama.params - embeddings) * (0.5 + 1 / 64) + embeddings * 2)
    assert 5.0 * GB < qlora.weights < 5.6 * GB  # 2 GiB of it the bf16 embeddings and head


def test_a_t4_trains_in_fp16_over_fp32_weights(tmp_path, tiny_model_dir, chat_files, monkeypatch):
    recipe = _recipe(tmp_path, tiny_model_dir, chat_files, "train.max_steps=2", "train.max_length=1024")
    # torch as a T4 answers: CUDA, bf16 only by emulation
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert device_module.mixed_precision(recipe, "cuda") == "fp16"
    assert device_module.resolve_dtype(recipe.model, "cuda") == torch.float32  # fp32 master weights
    assert device_module.generation_bf16(recipe, "cuda") is False
    assert device_module.compute_dtype("fp16") == torch.float16  # QLoRA's 4-bit matmuls too
    monkeypatch.undo()

    # trained as on that card (the model itself stays on this CPU, where accelerate runs fp16 in fp32)
    from tunesmith.models.loading import load_model

    monkeypatch.setattr(device_module, "cuda_native_bf16", lambda: False)
    monkeypatch.setattr(train, "resolve_device", lambda cfg: "cuda")
    monkeypatch.setattr(fit, "free_memory", lambda device: 15 * GB)
    monkeypatch.setattr(train, "load_model",
                        lambda cfg, location, device, **kw: load_model(cfg, location, "cpu", **kw))
    seen = {}
    import transformers

    original = transformers.TrainingArguments.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.TrainingArguments, "__init__", spy)
    pipeline.fine_tune(recipe)
    assert seen["fp16"] is True and seen["bf16"] is False
    assert load(TrainSummary, open_run(recipe).train_summary).mixed_precision == "fp16"


def test_the_cli_refuses_a_step_no_machine_holds_before_loading(tmp_path, llama_8b_dir, chat_files):
    """`tunesmith train` as users run it, on this machine's real free memory: 8B at a 131k context
    cannot fit anywhere CI runs; exit 2, the numbers, nothing loaded, no traceback."""
    import subprocess
    import sys

    recipe = tmp_path / "big.yaml"
    recipe.write_text(f"name: big\ndata:\n  train: {chat_files['train']}\nmodel:\n  name: {llama_8b_dir}\n"
                      f"train:\n  max_length: 131072\noutput:\n  dir: {tmp_path / 'runs'}\n")
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(recipe)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Nothing was loaded" in done.stderr and "GiB free" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "runs" / "big").exists()
