"""Will a recipe's training step fit in the device's memory? Decided before any weight is loaded
or downloaded: from the model's config.json alone (models/memory.py's estimate) against the
device's free memory, per GPU (each data-parallel process trains `train.batch_size` rows on a
replica).

    recipe = fit_to_memory(recipe, device, location, seq=longest_row)   # check refuses, auto fixes

A recipe that will not fit is refused (exit 2) with the numbers and the settings that fit, in the
order of what they cost: activation checkpointing (a third more compute), batch 1 with the same
effective batch through gradient accumulation, both, then QLoRA (a 4-bit base; LoRA for full
fine-tuning), then a smaller model. `train.fit: auto` applies the first that fits and the run's
recipe.yaml records it (the train stage rewrites its staging view's recipe; the commit records
that, rundir.refined); `off` skips the check. The train stage checks after tokenizing, for the
longest row, and before the weights are loaded or downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.console import note
from tunesmith.errors import ConfigError
from tunesmith.models.catalog import CatalogEntry, entry_from_config, find
from tunesmith.models.device import mixed_precision, resolve_dtype
from tunesmith.models.memory import GB, Memory, Step, training_memory
from tunesmith.recipe import Recipe, recipe_from_dict
from tunesmith.train.fast_ops import chunk_rows


def free_memory(device: str) -> float | None:
    """Bytes free on the device now: the current GPU's (CUDA), the system's available memory (the
    CPU, from /proc/meminfo), None where it cannot be told (Apple MPS, other systems)."""
    if device == "cuda":
        import torch

        return float(torch.cuda.mem_get_info()[0])
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def parameters_from_config(config: dict[str, Any]) -> float:
    """A decoder's (or encoder's) parameter count from its config.json numbers, without weights:
    the embeddings (and an untied head), and per layer the attention, the MLP and two norms."""
    h = config.get("hidden_size") or config["d_model"]
    heads = config.get("num_attention_heads") or config.get("num_heads")
    kv = (config.get("num_key_value_heads") or heads) * (config.get("head_dim") or h // heads)
    i = config.get("intermediate_size") or config.get("d_ff")
    layers = config.get("num_hidden_layers") or config.get("num_layers")
    embeddings = config["vocab_size"] * h * (1 if config.get("tie_word_embeddings", False) else 2)
    mlp = (3 if config.get("hidden_act", "silu") in ("silu", "swiglu", "gelu_pytorch_tanh") else 2) * h * i
    return embeddings + layers * (2 * h * h + 2 * h * kv + mlp + 2 * h) + h


def model_entry(recipe: Recipe, location: str) -> CatalogEntry:
    """The catalog entry of the recipe's model, or one made from its config.json (only that file
    is read or downloaded)."""
    listed = find(recipe.model.name)
    if listed is not None:
        return listed
    from tunesmith.models.loading import load_config

    config = load_config(recipe.model, location).to_dict()
    config = {**config, **config.get("text_config", {})}  # multimodal configs nest the decoder's
    return entry_from_config(recipe.model.name, recipe.model.family, config, parameters_from_config(config))


def step_for(recipe: Recipe, entry: CatalogEntry, device: str, seq: int | None = None) -> Step:
    """The memory-relevant shape of a training step of `recipe` on `device`. `seq`: the longest
    row when the data is known (length grouping trains the longest batch first), else
    train.max_length; packed rows always fill train.max_length."""
    import torch

    cfg = recipe.train
    precision = mixed_precision(recipe, device)
    weights = resolve_dtype(recipe.model, device)
    frozen_bf16 = precision == "bf16" and cfg.backend == "tunesmith" and cfg.adapter == "lora"
    if weights != torch.float32 or frozen_bf16:  # bf16 weights, or the SFT backend's frozen base in bf16
        stored = "bf16"
    else:
        stored = "fp32" if precision == "no" else "autocast"
    length = cfg.max_length if seq is None or packs(recipe, device) else min(seq, cfg.max_length)
    fused = recipe.model.family == "causal_lm" and not cfg.learns_from_answers and cfg.backend == "tunesmith"
    rows = length * cfg.batch_size * (2 if cfg.method == "dpo" else 1)
    method = cfg.weights
    return Step(method=method, seq=length, batch=cfg.batch_size * (2 if cfg.method == "dpo" else 1),
                precision=stored, optimizer=cfg.optimizer, device=device, rank=cfg.lora.r,
                checkpointing=cfg.gradient_checkpointing, lora_dropout=cfg.lora.dropout, fused_head=fused,
                chunk_elements=chunk_rows(rows, entry.vocab, entry.hidden, device) * entry.vocab)


def packs(recipe: Recipe, device: str) -> bool:
    """Whether training rows are packed (train.packing; auto: on CUDA with flash-attention-2)."""
    from tunesmith.models.device import attention_implementation

    choice = recipe.train.packing
    if choice == "auto":
        return (recipe.model.family == "causal_lm" and not recipe.train.learns_from_answers
                and device == "cuda"
                and attention_implementation(recipe.model, device) == "flash_attention_2")
    return bool(choice)


@dataclass
class Fix:
    changes: dict[str, Any]
    memory: Memory

    def describe(self) -> str:
        return " ".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                        for key, value in self.changes.items())


def candidate_fixes(recipe: Recipe) -> list[dict[str, Any]]:
    """The changes to try, cheapest in throughput first (each a dict of dotted recipe keys)."""
    cfg = recipe.train
    accumulate = {"train.batch_size": 1, "train.grad_accum": cfg.grad_accum * cfg.batch_size}
    checkpoint = {"train.gradient_checkpointing": True}
    fixes = [] if cfg.gradient_checkpointing else [checkpoint]
    if cfg.batch_size > 1:
        fixes += [accumulate, {**accumulate, **checkpoint}]
    smaller = {**(accumulate if cfg.batch_size > 1 else {}), **checkpoint}
    if cfg.method == "full":
        fixes.append({"train.method": "lora", **smaller})
    if cfg.method in ("lora", "full") and recipe.model.family == "causal_lm":
        fixes.append({"train.method": "qlora", **smaller})
    return [fix for i, fix in enumerate(fixes) if fix not in fixes[:i]]


def applied(recipe: Recipe, changes: dict[str, Any]) -> Recipe:
    data = recipe.model_dump(mode="json")
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    return recipe_from_dict(data, "train.fit")


def fit_to_memory(recipe: Recipe, device: str, location: str, seq: int | None = None,
                  processes: int = 1, free: float | None = None) -> Recipe:
    """`recipe` if its step fits the device's free memory (or train.fit is off, or the free memory
    cannot be told); with train.fit auto, the recipe with the first fix that fits; else a
    ConfigError with the numbers and the fixes. `free` overrides the measured free memory."""
    if recipe.train.fit == "off":
        return recipe
    free = free_memory(device) if free is None else free
    if free is None:
        return recipe
    try:
        entry = model_entry(recipe, location)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as error:
        # a config without the usual numbers (or none to be had): the load itself will tell
        note(f"train.fit: the memory of {recipe.model.name} cannot be estimated from its config "
             f"({type(error).__name__}: {error}); not checked.")
        return recipe
    need = training_memory(entry, step_for(recipe, entry, device, seq))
    # GPUs: one process a GPU, each with its own memory; CPU processes share the machine's
    share = processes if device == "cpu" else 1
    if need.total * share <= free:
        return recipe
    fits = []
    for changes in candidate_fixes(recipe):
        changed = applied(recipe, changes)
        memory = training_memory(entry, step_for(changed, entry, device, seq))
        if memory.total * share <= free:
            fits.append(Fix(changes, memory))
    where = f"{device}{' (per GPU, each of ' + str(processes) + ' processes)' if processes > 1 else ''}"
    if fits and recipe.train.fit == "auto":
        note(f"train.fit auto: {entry.name} needs ~{need.total / GB:.1f} GiB, {where} has "
             f"{free / GB:.1f} GiB free; applied {fits[0].describe()} "
             f"(~{fits[0].memory.total / GB:.1f} GiB), recorded in the run's recipe.yaml.")
        return applied(recipe, fits[0].changes)
    options = "; ".join(f"{fix.describe()} (~{fix.memory.total / GB:.1f} GiB)" for fix in fits[:3])
    advice = (f"Settings that fit: {options}. Add them to the recipe or the command line, or set "
              "train.fit=auto to apply the first." if fits else
              "No setting of this model fits: choose a smaller one (`tunesmith models recommend "
              f"--memory {free / GB:.0f}GB`), or train on more memory.")
    raise MemoryFitError(
        f"train: {entry.name} with this recipe needs ~{need.total / GB:.1f} GiB to train "
        f"({need.describe()}; batch {recipe.train.batch_size} x {step_for(recipe, entry, device, seq).seq} "
        f"tokens), but {where} has {free / GB:.1f} GiB free. Nothing was loaded. {advice} "
        "(train.fit=off skips this check.)")


class MemoryFitError(ConfigError):
    """train.fit check: the recipe's step does not fit the device's memory (the message has the fixes)."""


def world_size() -> int:
    """The processes training together (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
