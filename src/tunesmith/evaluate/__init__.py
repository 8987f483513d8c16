"""The evaluate stage: the base model and the fine-tuned model on the same examples.

    tunesmith eval recipes/demo.yaml

`run(recipe, run_dir)` computes validation loss and perplexity (answer tokens only, as in
training) and generates answers with greedy decoding for every evaluation set (test and the
named `data.eval_sets`, e.g. out-of-domain) with the base model and the fine-tuned one, same
prompts, same decoding. Writes `eval/summary.json` and `eval/predictions.jsonl`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from tunesmith.data import load_splits
from tunesmith.evaluate.generation import Generator, HFGenerator
from tunesmith.evaluate.metrics import score
from tunesmith.models.chat import prompt_and_reference, tokenize_record
from tunesmith.models.loading import load_model, load_tokenizer, model_location, resolve_device
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, write_json, write_jsonl
from tunesmith.train import mixed_precision

NOT_EVAL_SETS = ("train", "val")


@dataclass
class EvalResult:
    summary: dict[str, Any]
    predictions: list[dict[str, Any]]


def mean_answer_loss(model: Any, tokenizer: Any, records: list[dict], recipe: Recipe,
                     batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over the loss-masked tokens of `records`."""
    import torch

    rows = [tokenize_record(tokenizer, r, recipe.train.loss_on, recipe.train.max_length,
                            recipe.data.system_prompt) for r in records]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch])
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                 for r in batch])
            keep = torch.tensor([r["assistant_masks"] + [0] * (width - len(r["assistant_masks"]))
                                 for r in batch])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            targets = ids[:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            weights = keep[:, 1:].to(device).float()
            total += float((losses * weights).sum())
            count += int(weights.sum())
    return total / max(count, 1)


def _models(recipe: Recipe, run_dir: RunDir) -> tuple[Any, Any, Any]:
    """(tokenizer, fine-tuned model, context manager that turns it into the base model).

    With LoRA the base model is the same weights with the adapter disabled: one model in
    memory, and the baseline is exactly the model we started from."""
    from peft import PeftModel

    device = resolve_device(recipe.model)
    location = model_location(recipe.model)
    tokenizer = load_tokenizer(recipe.model, str(run_dir.model))
    base = load_model(recipe.model, location, device)
    if recipe.train.method == "lora":
        tuned = PeftModel.from_pretrained(base, str(run_dir.model))

        @contextlib.contextmanager
        def adapter_off():
            with tuned.disable_adapter():
                yield tuned

        return tokenizer, tuned, adapter_off
    tuned = load_model(recipe.model, str(run_dir.model), device)
    return tokenizer, tuned, lambda: contextlib.nullcontext(base)


def run(recipe: Recipe, run_dir: RunDir, generator_factory: Any = None) -> EvalResult:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = recipe.eval
    splits = load_splits(run_dir)
    tokenizer, tuned, as_base = _models(recipe, run_dir)
    device = resolve_device(recipe.model)
    bf16 = mixed_precision(recipe, device) == "bf16"

    def generator_for(model: Any) -> Generator:
        if generator_factory is not None:
            return generator_factory(model, tokenizer)
        return HFGenerator(model, tokenizer, cfg.max_new_tokens, cfg.batch_size, bf16)

    summary: dict[str, Any] = {"metric": cfg.metric, "sets": {}, "validation": {}}
    if splits.get("val"):
        val = splits["val"][: cfg.max_examples]
        tuned_loss = mean_answer_loss(tuned, tokenizer, val, recipe)
        summary["validation"]["finetuned"] = {"loss": tuned_loss, "perplexity": math.exp(tuned_loss)}
        if cfg.baseline:
            with as_base() as base:
                base_loss = mean_answer_loss(base, tokenizer, val, recipe)
            summary["validation"]["base"] = {"loss": base_loss, "perplexity": math.exp(base_loss)}

    predictions: list[dict[str, Any]] = []
    speeds = []
    for name, records in splits.items():
        if name in NOT_EVAL_SETS or not records:
            continue
        records = records[: cfg.max_examples]
        pairs = [prompt_and_reference(r, recipe.data.system_prompt) for r in records]
        prompts = [p for p, _ in pairs]
        answers: dict[str, list[str]] = {}
        generator = generator_for(tuned)
        answers["finetuned"] = generator.generate(prompts, f"{name} (fine-tuned)")
        speeds.append(getattr(generator, "examples_per_second", 0.0))
        if cfg.baseline:
            with as_base() as base:
                answers["base"] = generator_for(base).generate(
                    prompts, f"{name} (base)")
        rows = [{"set": name, "index": i, "meta": record["meta"], "prompt": prompt[-1]["content"],
                 "reference": reference}
                for i, (record, (prompt, reference)) in enumerate(zip(records, pairs, strict=True))]
        set_summary: dict[str, Any] = {"examples": len(records)}
        for model_name, outputs in answers.items():
            for row, output in zip(rows, outputs, strict=True):
                row[f"{model_name}_prediction"] = output
                row[f"{model_name}_score"] = score(cfg.metric, output, row["reference"], cfg.json_fields)
            if cfg.metric != "none":
                set_summary[model_name] = sum(r[f"{model_name}_score"] for r in rows) / len(rows)
        predictions += rows
        if "base" in set_summary and "finetuned" in set_summary:
            set_summary["delta"] = set_summary["finetuned"] - set_summary["base"]
        summary["sets"][name] = set_summary
    summary["generation_examples_per_second"] = (sum(speeds) / len(speeds)) if speeds else None
    run_dir.eval.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.eval / "summary.json", summary)
    write_jsonl(run_dir.eval / "predictions.jsonl", predictions)
    run_dir.record("eval", run_dir.eval)
    return EvalResult(summary, predictions)
