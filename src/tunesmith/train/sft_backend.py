"""tunesmith's SFT backend for decoders: transformers' Trainer runs the loop (checkpoints and
resume, evaluation, accelerate / DDP / FSDP / DeepSpeed, tunesmith's callbacks), and the levers
measured by bench/train_throughput.py change how one step computes the same numbers:

1. Frozen base weights stored in bf16 when training in bf16. Autocast otherwise re-casts every
   fp32 weight at every forward; the LoRA weights (the ones trained) stay fp32. PEFT's cast of
   each adapter's input to fp32 (which autocast casts back) is switched off too.
2. Logits only where the loss is. The vocabulary head (49k x 576 on SmolLM2) sees the answer
   positions only, and for a plain head its cross-entropy is fused and chunked
   (fast_ops.linear_cross_entropy), so the [tokens, vocab] logits never exist whole.
3. No attention mask. Rows are right-padded, so under causal attention no real token attends to
   a pad; without a mask SDPA takes its causal kernel (`is_causal`), skipping the masked half.
   The pads' own outputs are never in the loss (tests/test_train_speed.py checks equal losses).
   Short rows skip SDPA's flash kernel for two matmuls (fast_ops.short_causal_attention).
4. The decoder layers compiled (`train.compile`): regional `torch.compile` with dynamic shapes,
   so one compiled layer serves every layer and every sequence length.

`train.backend: trl` selects TRL's SFTTrainer as-is instead (trl_backend.py).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from tunesmith.errors import ConfigError
from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.fast_ops import linear_cross_entropy, register_attention
from tunesmith.train.guards import l1_penalty
from tunesmith.train.sharding import released
from tunesmith.train.trainer import callbacks, train, trainer_args

IGNORE = -100
"""The label of a position outside the loss (the convention of transformers' losses)."""


@dataclass
class AnswerCollator:
    """Right-padded `input_ids` and `attention_mask` (which counts the real tokens), and `labels`:
    the token where `assistant_masks` is 1, IGNORE elsewhere; `weights` per token when the rows
    carry a loss weight (data.bias.mitigate: reweight). Packed rows (packing.py) bring their
    `position_ids`, which restart per original row; with `flatten` (flash-attention-2) the whole
    batch becomes one row without padding, for its varlen kernel."""

    pad_token_id: int
    flatten: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.flatten and "position_ids" in rows[0]:
            rows = [{key: [v for row in rows for v in row[key]] for key in rows[0]}]
        length = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens = torch.tensor(row["input_ids"], dtype=torch.long)
            ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
            keep = torch.tensor(row["assistant_masks"], dtype=torch.bool)
            labels[i, :len(tokens)] = torch.where(keep, tokens, IGNORE)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "position_ids" in rows[0]:  # pads continue the last row's positions: nothing attends to them
            positions = torch.arange(length).repeat(len(rows), 1)
            for i, row in enumerate(rows):
                given = torch.tensor(row["position_ids"], dtype=torch.long)
                positions[i, :len(given)] = given
                positions[i, len(given):] += int(given[-1]) + 1 - len(given)
            batch["position_ids"] = positions
        if "weight" in rows[0] or "token_weights" in rows[0]:
            weights = torch.ones((len(rows), length), dtype=torch.float32)
            for i, row in enumerate(rows):
                given = row.get("token_weights") or [row["weight"]] * len(row["input_ids"])
                weights[i, :len(given)] = torch.tensor(given, dtype=torch.float32)
            batch["weights"] = weights
        return batch


@contextlib.contextmanager
def answer_positions_only(model: Any, positions: tuple[torch.Tensor, torch.Tensor],
                          hidden: bool = False) -> Iterator[None]:
    """While inside, the model's output layer computes logits for `positions` (row, column
    indices into the hidden states) only: [N, vocab] instead of [batch, length, vocab]; with
    `hidden`, it returns the hidden states at those positions ([N, d]) and computes nothing."""
    rows, columns = positions
    head = _unwrap(model).get_output_embeddings()
    if head is None:
        raise ConfigError("this model has no output embeddings to restrict to the answer positions; "
                          "set train.backend: trl.")
    if hidden:
        head.forward = lambda states: states[rows, columns]  # an instance attribute, removed below
        try:
            yield
        finally:
            del head.forward
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][rows, columns], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@functools.cache
def liger_loss() -> Any:
    """Liger's fused linear cross-entropy (summed), when the liger_kernel package is installed;
    None otherwise (the own fused head, fast_ops.linear_cross_entropy, is used instead)."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


def apply_liger(model: Any) -> bool:
    """Liger's Triton kernels for RMSNorm, SwiGLU and RoPE in the model (CUDA, when liger_kernel is
    installed and knows the architecture); the loss is fused in answer_loss. Whether applied."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    try:
        _apply_liger_kernel_to_instance(model=_unwrap(model), rope=True, rms_norm=True, swiglu=True,
                                        cross_entropy=False, fused_linear_cross_entropy=False)
    except (ValueError, NotImplementedError, KeyError, AttributeError):  # an architecture it lacks
        return False
    return True


LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config fields of models that change the head's output before returning it (Gemma 2/3,
Cohere, Granite, ...): they keep the plain head so that the change is applied."""


def fused_head(model: Any) -> bool:
    """Whether the head is a plain bias-free nn.Linear whose output the model returns as it is,
    so that its cross-entropy can be fused (fast_ops.linear_cross_entropy), and whose weight is
    whole here: the fused loss reads it outside the head's forward, where ZeRO-3 has released it
    (an empty tensor) and FSDP2 holds a shard; a sharded model takes the plain loss."""
    inner = _unwrap(model)
    head = inner.get_output_embeddings()
    plain = type(head) is torch.nn.Linear and head.bias is None and not released(head.weight)
    return plain and all(getattr(inner.config, k, None) in (None, 1, 1.0) for k in LOGIT_POSTPROCESSING)


def _unwrap(model: Any) -> Any:
    """The transformers model inside DDP / PEFT wrappers."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_loss(model: Any, batch: dict[str, torch.Tensor], attention_mask: bool,
                fused: bool = False) -> tuple[torch.Tensor, Any]:
    """The summed cross-entropy of the answer tokens (each predicted from the position before it,
    times its weight when the batch has `weights`) and the model's outputs; logits exist for
    those positions only, and with `fused` only a chunk at a time inside
    fast_ops.linear_cross_entropy (or Liger's, on CUDA when installed). Packed rows pass their
    `position_ids` and no mask: transformers keeps attention inside each original row."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    rows, columns = (targets != IGNORE).nonzero(as_tuple=True)
    extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    with answer_positions_only(model, (rows, columns), hidden=fused):
        outputs = model(input_ids=batch["input_ids"], use_cache=False,
                        attention_mask=batch["attention_mask"] if attention_mask and not extra else None,
                        **extra)
    logits = outputs.logits
    if logits.dim() != 2 or logits.shape[0] != rows.numel():
        raise ConfigError(f"{type(_unwrap(model)).__name__} reshapes its logits after the output layer; "
                          "set train.backend: trl for it.")
    weights = batch.get("weights")  # per row [batch], or per token [batch, length] (the collator's)
    if weights is not None:
        weights = weights[rows] if weights.dim() == 1 else weights[:, 1:][rows, columns]
    if fused:
        head = _unwrap(model).get_output_embeddings().weight
        liger = liger_loss() if weights is None and logits.device.type == "cuda" else None
        if liger is not None:
            return liger(head, logits, targets[rows, columns]), outputs
        return linear_cross_entropy(logits, head, targets[rows, columns], weights), outputs
    losses = torch.nn.functional.cross_entropy(logits.float(), targets[rows, columns], reduction="none")
    return (losses if weights is None else losses * weights).sum(), outputs


class GlobalLengthGroupedSampler(torch.utils.data.Sampler):
    """transformers' length grouping (shuffle, sort within mega-batches, longest batch first) with
    mega-batches of 50 global batches, then the batches after the first shuffled (else a dataset of
    one mega-batch meets its batches in the same order every epoch), all from its own seeded
    generator (dropout's draws from the global generator do not move the order). transformers
    shrinks mega-batches to a quarter of a small dataset: on 64 alpaca rows in batches of 8 that
    padded 14,072 real tokens to 20,992; sorted in one mega-batch, to 15,784."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        self.batch_size, self.lengths = batch_size, lengths
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        order = get_length_grouped_indices(self.lengths, self.batch_size, mega_batch_mult=50,
                                           generator=self.generator)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rest = [batches[i] for i in (torch.randperm(len(batches) - 1, generator=self.generator) + 1).tolist()]
        return iter([i for batch in [batches[0], *rest] for i in batch])


class AnswerTrainer(Trainer):
    """Trainer whose loss is the token-mean cross-entropy of the answer tokens, computed on their
    positions only (+ train.l1 x sum |w| while training). The mean is over the answer tokens of
    the whole optimizer step, across gradient accumulation and processes (Trainer's
    `num_items_in_batch`), as transformers' own causal-LM loss does."""

    def __init__(self, *args: Any, l1: float = 0.0, attention_mask: bool = False, fused: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l1, self.attention_mask, self.fused = l1, attention_mask, fused
        self.model_accepts_loss_kwargs = True  # count answer tokens per step, scale for accumulation

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Length grouping over the global batch (all processes, all accumulation steps), so that
        N processes train on the same rows per optimizer step as one process does; transformers
        groups by the per-process batch, which reorders the data when the process count changes."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return GlobalLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
            [len(ids) for ids in dataset["input_ids"]], self.args.data_seed or self.args.seed)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        total, outputs = answer_loss(model, inputs, self.attention_mask, self.fused)
        if num_items_in_batch is None:  # evaluation: this batch's mean
            loss = total / max(int((inputs["labels"][:, 1:] != IGNORE).sum()), 1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:  # DDP averages gradients over processes
                loss = loss * self.accelerator.num_processes
        if self.l1 > 0 and model.training:
            loss = loss + self.l1 * l1_penalty(model)
        return (loss, outputs) if return_outputs else loss


def store_frozen_in_bf16(model: Any) -> int:
    """Cast the frozen floating-point parameters to bf16 (the trained ones stay as they are);
    the number of parameters cast."""
    cast = 0
    for parameter in model.parameters():
        frozen = not parameter.requires_grad and parameter.is_floating_point()
        if frozen and parameter.dtype != torch.bfloat16:
            parameter.data = parameter.data.to(torch.bfloat16)
            cast += parameter.numel()
    return cast


def keep_adapter_inputs_in_bf16(model: Any) -> int:
    """PEFT casts each LoRA layer's input to the adapter's dtype (fp32), which autocast casts back
    to bf16 for the matmul: two copies of every activation, for the same bf16 product. Turn that
    off (PEFT's own switch, `cast_input_dtype_enabled`); the number of layers changed."""
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


@contextlib.contextmanager
def short_attention(model: Any) -> Iterator[None]:
    """While inside, a model on SDPA attention uses fast_ops.short_causal_attention (which hands
    everything but short unmasked causal rows on a CPU back to SDPA); SDPA again afterwards."""
    inner = _unwrap(model)
    if getattr(inner.config, "_attn_implementation", None) != "sdpa":
        yield
        return
    inner.set_attn_implementation(register_attention())
    try:
        yield
    finally:
        inner.set_attn_implementation("sdpa")


def can_compile() -> bool:
    """Inductor writes C++ on the CPU: it needs a compiler."""
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def compile_layers(model: Any) -> int:
    """Regional compilation: `torch.compile` each decoder layer, dynamic shapes. Every layer runs
    the same code, so the compiled graph is made once (twice: the first layer's input needs no
    gradient) and reused; the number of layers compiled. (Making the embeddings' output require a
    gradient, so that the first layer shares the graph, cut the cold warm-up on the alpaca bench
    from 63-67 s to 41-51 s, steady state within noise: not taken yet, as the bench table in the
    README was measured without it.)"""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def use_compile(job: TrainJob) -> bool:
    """train.compile: true / false, or auto: on the CPU when the run is long enough to earn back
    the compile time and a compiler is there (see COMPILE_WORTH); off on GPUs until
    scripts/gpu_check.py has measured compiled against eager there."""
    choice = job.recipe.train.compile
    if choice is False or (choice == "auto" and job.device != "cpu"):
        return False
    if not can_compile():
        if choice is True:
            raise ConfigError("train.compile: true needs a C++ compiler (g++) for torch.compile's CPU "
                              "kernels; install one (apt install g++) or set train.compile: auto.")
        return False
    if choice is True:
        return True
    parameters = sum(p.numel() for p in job.model.parameters())
    tokens = sum(len(ids) for ids in job.train_set["input_ids"]) * job.recipe.train.epochs
    if job.recipe.train.max_steps:
        per_step = tokens / max(job.recipe.train.epochs * len(job.train_set), 1) * job.recipe.train.batch_size
        tokens = min(tokens, per_step * job.recipe.train.max_steps * job.recipe.train.grad_accum)
    return parameters * tokens >= COMPILE_WORTH


COMPILE_WORTH = 134e6 * 100_000
"""On the CPU, auto compiles from ~100k trained tokens of a 135M model (parameters x tokens, so sooner for
bigger models). Measured on SmolLM2-135M, 2 CPU cores (bench/train_throughput.py): compiled
layers train at ~370-380 tok/s against 332 eager, ~0.35 ms less per token, for a cold compile of
~63 s: even after ~180k tokens; torch's cache makes later compiles a few seconds (a second run
of the same shapes), hence sooner."""


@dataclass
class SFTBackend:
    name: str = "tunesmith"

    def fit(self, job: TrainJob) -> Fitted:
        from transformers import TrainingArguments

        if job.precision == "bf16":
            store_frozen_in_bf16(job.model)
            keep_adapter_inputs_in_bf16(job.model)
        if job.device == "cuda":
            apply_liger(job.model)
        if use_compile(job):
            compile_layers(job.model)
        hooks, progress = callbacks(job)
        cfg = job.recipe.train
        arguments = TrainingArguments(
            **trainer_args(job), include_num_input_tokens_seen="non_padding", remove_unused_columns=False,
            prediction_loss_only=True,
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")
        pad = job.tokenizer.pad_token_id
        pad = job.tokenizer.eos_token_id if pad is None else pad
        flatten = getattr(_unwrap(job.model).config, "_attn_implementation", None) == "flash_attention_2"
        trainer = AnswerTrainer(
            model=job.model, args=arguments, train_dataset=job.train_set, eval_dataset=job.val_set,
            processing_class=job.tokenizer, data_collator=AnswerCollator(pad, flatten), callbacks=hooks,
            l1=cfg.l1, fused=fused_head(job.model))
        with warnings.catch_warnings(), short_attention(job.model):
            warnings.filterwarnings("ignore", message=".*recompil.*")
            return train(trainer, job, progress)
