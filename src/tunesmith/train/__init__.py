"""The train stage: supervised fine-tuning with PEFT LoRA (or full), on a training backend.

    tunesmith train recipes/demo.yaml [--resume] [train.lr=1e-4 ...]

`run(recipe, run_dir, resume=False)` tokenizes the prepared splits (loss on assistant turns
by default), wraps the base model in LoRA (or trains it fully), and trains with checkpoints
every `train.save_steps`. `resume=True` continues from the newest complete checkpoint, so a
run killed with `kill -9` finishes with the same total steps. Writes the adapter (or full
weights) and tokenizer to `model/`, `train/log.jsonl` and `train/summary.json`.

    backend.py      the Backend protocol: a TrainJob in, a Fitted model out
    trainer.py      the Trainer glue every backend shares (arguments, callbacks, result) and the
                    table of backends
    sft_backend.py  the decoder SFT backend: Trainer + the measured speed levers (the default)
    trl_backend.py  TRL's SFTTrainer, used as-is (train.backend: trl)
    rows.py         the rows a backend trains on, per method and family
    preference.py   DPO / KTO: TRL's preference trainers
    grpo.py         GRPO: TRL's GRPOTrainer, learning from rewards (rewards.py) on its own
                    rollouts (rollouts.py: the batched engine, or TRL's generate / vLLM)
    hf_backend.py   transformers' Trainer: encoders (class weights) and encoder-decoders
    classifier.py   an encoder's rows (text, label index) and class weights
    callbacks.py    the Trainer side: progress and log.jsonl, guards, the eval-loss hook
    guards.py       overfitting guards, independent of the backend (they see losses only)
    checkpoints.py  which checkpoint to resume from, and whether a resume is possible
    distributed.py  train.run(processes=N): N worker processes (accelerate, DDP), rank 0 writes
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import track
from tunesmith.artifacts import GuardEvent, TrainSummary, save
from tunesmith.data import load_splits
from tunesmith.errors import ConfigError
from tunesmith.files import write_json, write_text
from tunesmith.models.device import compute_dtype, mixed_precision, peak_memory, resolve_device
from tunesmith.models.families import Family, family_for
from tunesmith.models.loading import load_model, load_tokenizer, model_location
from tunesmith.recipe import Recipe, dump_recipe
from tunesmith.rundir import RunDir
from tunesmith.track import Tracking
from tunesmith.train.backend import Backend, Fitted, TrainJob
from tunesmith.train.checkpoints import check_resumable, last_complete_checkpoint, trim_log
from tunesmith.train.fit import fit_to_memory, packs, world_size
from tunesmith.train.guards import OverfittingGuards
from tunesmith.train.rows import seq2seq_dataset, tokenized_dataset, training_sets
from tunesmith.train.sharding import placement, prepare
from tunesmith.train.trainer import backend_for

if TYPE_CHECKING:
    from tunesmith.train.distributed import Launch

__all__ = ["Backend", "TrainResult", "check_resumable", "run", "seq2seq_dataset", "tokenized_dataset",
           "train_here"]


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    train_loss: float | None
    tokens_per_second: float
    runtime_seconds: float
    final_eval_loss: float | None = None
    guards: list[GuardEvent] | None = None


def _wrap_lora(model: Any, recipe: Recipe, family: Family) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    if recipe.train.weights == "qlora":
        # PEFT's k-bit preparation: the unquantized weights (norms, embeddings, head) in fp32 and
        # frozen, the input embeddings' output requiring a gradient (so that checkpointed layers
        # pass one back), checkpointing switched on as the recipe says
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})

    lora = recipe.train.lora
    if lora.targets != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear)}
        unknown = [t for t in lora.targets if t not in names]
        if unknown:
            raise ConfigError(
                f"train.lora.targets: {', '.join(unknown)} matches no linear layer of {recipe.model.name}. "
                f"Its linear layers are: {', '.join(sorted(names))}; or use all-linear.")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.targets, task_type=family.peft_task_type)
    return get_peft_model(model, config)


def _continue_lora(model: Any, adapter: str) -> Any:
    """An earlier run's LoRA adapter on the base, trainable (train.init_adapter)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"train.init_adapter {adapter}: no LoRA adapter there (adapter_config.json is "
                          "missing). Give a LoRA run's model directory, e.g. runs/demo/model.")
    return PeftModel.from_pretrained(model, adapter, is_trainable=True)


def _quiet() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def prepare_checkpoints(recipe: Recipe, run_dir: RunDir, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh, and clear what an old run left)."""
    # checkpoints and the log in progress live in the run's work area, which survives a failed
    # or interrupted command (for --resume); model/ and train/ are written to the staging view
    checkpoint = last_complete_checkpoint(run_dir.checkpoints) if resume else None
    if not resume and run_dir.checkpoints.exists():
        shutil.rmtree(run_dir.checkpoints)  # a fresh run must not resume someone's old state
    if checkpoint is not None:
        trim_log(run_dir.log_in_progress, int(checkpoint.name.split("-")[-1]))
    run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.checkpoint_recipe, recipe.model_dump(mode="json"))
    return checkpoint


def _job(recipe: Recipe, run_dir: RunDir, splits: dict[str, list[dict]], resume_from: Path | None,
         on_eval_loss: Callable[[int, int, float], bool] | None, tracking: Tracking) -> TrainJob:
    import transformers

    location, family = model_location(recipe.model), family_for(recipe.model)
    # this worker's device (cuda:LOCAL_RANK under a launch) and the distributed state, both before
    # anything is loaded (train/sharding.py)
    placed = placement(resolve_device(recipe.model))
    keep_alive = prepare(placed)
    device = placed.device.split(":")[0]
    pack = packs(recipe, device)
    tokenizer = load_tokenizer(recipe.model, location)
    sets = training_sets(recipe, tokenizer, family, splits, pack)
    train_set = sets.train
    longest = max((len(ids) for ids in train_set["input_ids"]), default=None) \
        if "input_ids" in train_set.column_names else None
    # before any weight is loaded or downloaded, for the longest row (length grouping trains the
    # longest batch first); train.fit auto's fix is recorded in the run's recipe.yaml
    fitted = fit_to_memory(recipe, device, location, seq=longest, processes=world_size())
    if fitted is not recipe and is_main_process():
        write_text(run_dir.recipe, dump_recipe(fitted))
    recipe = fitted
    # seed before the adapter's random initialisation, not only in Trainer: a run's result must not
    # depend on what ran before it in the process (a tune trial replayed from best.yaml, say)
    transformers.set_seed(recipe.train.seed)
    precision = mixed_precision(recipe, device)
    quantize = compute_dtype(precision) if recipe.train.weights == "qlora" else None
    model = load_model(recipe.model, location, placed.device, dropout=recipe.train.model_dropout,
                       quantize=quantize, move=placed.moves, skeleton=placed.skeleton, **sets.head)
    del keep_alive  # ZeRO-3 partitioned the weights as they loaded; Trainer holds its own config
    if recipe.train.init_adapter:
        model = _continue_lora(model, recipe.train.init_adapter)
    elif recipe.train.adapter == "lora":
        model = _wrap_lora(model, recipe, family)
    return TrainJob(recipe, model, tokenizer, family, train_set, sets.val, device,
                    precision, run_dir.checkpoints, resume_from,
                    run_dir.log_in_progress,
                    OverfittingGuards(recipe.train), on_eval_loss,
                    sets.class_weights, tracking)


def _save(job: TrainJob, fitted: Fitted, run_dir: RunDir) -> None:
    """model/ (adapter or weights, safetensors, and the tokenizer) and train/log.jsonl."""
    if run_dir.model.exists():
        shutil.rmtree(run_dir.model)
    run_dir.train_log.parent.mkdir(parents=True, exist_ok=True)
    if job.log_path.exists():
        shutil.copyfile(job.log_path, run_dir.train_log)
    # a sharded model's weights come gathered (fitted.state_dict); otherwise the model's own
    fitted.model.save_pretrained(str(run_dir.model), safe_serialization=True, state_dict=fitted.state_dict)
    job.tokenizer.save_pretrained(str(run_dir.model))
    if not job.family.generates:
        from tunesmith.train.classifier import save_labels

        config = fitted.model.config
        save_labels(run_dir.model, [config.id2label[i] for i in range(config.num_labels)], job.class_weights)


def merge(recipe: Recipe, run_dir: RunDir) -> None:
    """train.merge: the adapter merged into a fresh full-precision base (training may have stored
    the frozen base in bf16), or for QLoRA into the 4-bit base dequantized: the weights the adapter
    trained on. Done once, by the launching process, after training has let go of its memory
    (never a second full base on a worker next to its training copy)."""
    if not (recipe.train.merge and recipe.train.adapter == "lora"):
        return
    from tunesmith.models.loading import load_run_model

    run_model = load_run_model(recipe.model, recipe.train.weights, run_dir.model)
    merged = run_model.model.merge_and_unload()
    merged.save_pretrained(str(run_dir.merged_model), safe_serialization=True)
    run_model.tokenizer.save_pretrained(str(run_dir.merged_model))


def is_main_process() -> bool:
    """True unless this is a distributed worker of rank > 0 (torchrun / accelerate set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def run(recipe: Recipe, run_dir: RunDir, resume: bool = False,
        on_eval_loss: Callable[[int, int, float], bool] | None = None,
        splits: dict[str, list[dict]] | None = None, backend: Backend | None = None,
        launch: Launch | None = None, tracking: Tracking | None = None) -> TrainResult:
    """Train; `on_eval_loss(step, max_steps, loss)` (the tune stage's pruning; True stops),
    `splits` (e.g. a CV fold) and `tracking` (a tune trial's tracker runs, which its caller
    finishes) let other stages reuse the same training path. A distributed `launch` trains in
    worker processes (distributed.py) on the data this process prepared."""
    checkpoint = prepare_checkpoints(recipe, run_dir, resume)
    try:
        if launch is not None and launch.distributed:
            from tunesmith.train import distributed

            result = distributed.launch(recipe, run_dir, checkpoint, launch)
        else:
            result = train_here(recipe, run_dir, checkpoint, on_eval_loss, splits, backend, tracking)
        if run_dir.model.exists():  # not on a machine of rank > 0: machine 0 writes the run
            merge(recipe, run_dir)
        return result
    except BaseException:
        # stopped before its first checkpoint (a refused recipe, say): nothing to resume, so
        # nothing of this attempt is left in the work area
        if not any(run_dir.checkpoints.glob("checkpoint-*")):
            shutil.rmtree(run_dir.checkpoints, ignore_errors=True)
        raise


def train_here(recipe: Recipe, run_dir: RunDir, checkpoint: Path | None,
               on_eval_loss: Callable[[int, int, float], bool] | None = None,
               splits: dict[str, list[dict]] | None = None, backend: Backend | None = None,
               tracking: Tracking | None = None) -> TrainResult:
    """Train in this process (one of several when launched distributed: then only rank 0 writes,
    and reports to the trackers: new tracker runs unless `tracking` is given)."""
    _quiet()
    splits = splits if splits is not None else load_splits(run_dir)
    owned = tracking is None
    if tracking is None:
        tracking = track.start(recipe, run_dir) if is_main_process() else Tracking([])
    try:
        job = _job(recipe, run_dir, splits, checkpoint, on_eval_loss, tracking)
        started = time.time()
        fitted = (backend or backend_for(job)).fit(job)
    except BaseException:
        if owned:
            tracking.finish("failed")
        raise
    runtime = time.time() - started
    done = fitted.progress
    if not is_main_process():
        return TrainResult(run_dir.model, done.steps, done.train_loss, done.tokens_per_second, runtime,
                           done.final_eval_loss, job.guards.events)
    _save(job, fitted, run_dir)
    summary = TrainSummary(
        **done.model_dump(), runtime_seconds=runtime,
        resumed_from=job.resume_from.name if job.resume_from else None, device=job.device,
        mixed_precision=job.precision, method=job.recipe.train.method,
        trainable_parameters=sum(p.numel() for p in fitted.model.parameters() if p.requires_grad),
        train_examples=len(job.train_set), val_examples=len(job.val_set) if job.val_set is not None else 0,
        guards=job.guards.events, peak_memory_bytes=peak_memory(job.device),
        processes=int(os.environ.get("WORLD_SIZE", "1")))
    save(summary, run_dir.train_summary)
    tracking.summary({"train/runtime_seconds": runtime, "train/train_loss": done.train_loss,
                      **({"train/final_eval_loss": done.final_eval_loss} if done.final_eval_loss else {})})
    tracking.artifacts([run_dir.train_summary])
    if owned:
        tracking.finish()
    return TrainResult(run_dir.model, done.steps, done.train_loss, done.tokens_per_second, runtime,
                       done.final_eval_loss, job.guards.events)
