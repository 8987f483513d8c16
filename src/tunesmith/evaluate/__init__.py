"""The evaluate stage: the base model and the fine-tuned model on the same examples.

    tunesmith eval recipes/demo.yaml

`run(recipe, run_dir)` writes `eval/summary.json` and `eval/predictions.jsonl` with:
- validation loss and perplexity on answer tokens (as in training), base and fine-tuned;
- per evaluation set (test and each `data.eval_sets`, e.g. out-of-domain): greedy answers of
  both models to the same prompts, every metric with a bootstrap 95% CI, the paired delta of the
  primary metric with its CI, a paired bootstrap p-value and (for 0/1 metrics) McNemar's test;
  label metrics and a confusion matrix where answers are labels; per-`meta.group` slices;
- error analysis: an error class for every fine-tuned answer, the worst examples, top confusions;
- generalisation: train/validation loss curves and their final gap, and a memorisation probe;
- forgetting: a bundled general-question probe scored for both models;
- bias: counterfactual prompts with demographic terms swapped, metric per group, the largest
  gap and the share of answers that changed; a gap over `eval.bias.max_gap` warns or fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from tunesmith.data import load_splits
from tunesmith.errors import ModelError
from tunesmith.evaluate import analysis, bias
from tunesmith.evaluate.generation import Generator, HFGenerator
from tunesmith.evaluate.metrics import score, set_scores
from tunesmith.evaluate.stats import mcnemar, paired_bootstrap
from tunesmith.models.chat import prompt_and_reference, tokenize_record
from tunesmith.models.device import generation_bf16, resolve_device
from tunesmith.models.loading import load_model, load_tokenizer, model_location
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir, read_jsonl, write_json, write_jsonl

NOT_EVAL_SETS = ("train", "val")
BINARY_METRICS = ("exact_match", "json_fields", "json_valid")


@dataclass
class EvalResult:
    summary: dict[str, Any]
    predictions: list[dict[str, Any]]
    gate_failure: str | None = None
    """Why a quality gate (eval.bias.on_gap: fail) failed; the caller raises after committing."""


def mean_answer_loss(model: Any, tokenizer: Any, records: list[dict], recipe: Recipe) -> float:
    """Token-weighted mean cross-entropy over the loss-masked tokens of `records`."""
    import torch

    batch_size = recipe.eval.batch_size
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

    expected = "adapter_config.json" if recipe.train.method == "lora" else "config.json"
    if not (run_dir.model / expected).exists():
        raise ModelError(f"{run_dir.model}: no trained model ({expected} missing). Run "
                         "`tunesmith train RECIPE` (or `tunesmith run RECIPE`) first.")
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


def _paired(metric: str, base: list[float], tuned: list[float]) -> dict[str, Any]:
    out = paired_bootstrap(base, tuned)
    if metric in BINARY_METRICS:
        out["mcnemar"] = mcnemar(base, tuned)
    out["significant"] = out["ci_low"] > 0 or out["ci_high"] < 0
    return out


def _slices(rows: list[dict], key: str) -> dict[str, Any]:
    groups: dict[str, list[float]] = {}
    for row in rows:
        group = row["meta"].get("group")
        if group not in (None, "") and row.get(key) is not None:
            groups.setdefault(str(group), []).append(row[key])
    return {g: {"examples": len(v), "value": sum(v) / len(v)} for g, v in sorted(groups.items())}


def _probe_accepts(answer: str, accepted: list[str]) -> float:
    return float(any(re.search(r"(?<!\w)" + re.escape(a.lower()) + r"(?!\w)", answer.lower())
                     for a in accepted))


def _forgetting(generator_for, tuned, as_base, baseline: bool) -> dict[str, Any]:
    probes = [json.loads(line) for line in
              (files("tunesmith.evaluate") / "probes" / "general.jsonl").read_text().splitlines()]
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in probes]
    out: dict[str, Any] = {"examples": len(probes)}
    scores = {}
    scores["finetuned"] = [_probe_accepts(a, p["accept"]) for a, p in
                           zip(generator_for(tuned).generate(prompts, "forgetting probe (fine-tuned)"),
                               probes, strict=True)]
    if baseline:
        with as_base() as base:
            answers = generator_for(base).generate(prompts, "forgetting probe (base)")
        scores["base"] = [_probe_accepts(a, p["accept"]) for a, p in zip(answers, probes, strict=True)]
        out["paired"] = _paired("exact_match", scores["base"], scores["finetuned"])
    for name, values in scores.items():
        out[name] = sum(values) / len(values)
    return out


def _bias(recipe: Recipe, records: list[dict], pairs: list, generator: Generator) -> dict[str, Any]:
    cfg = recipe.eval.bias
    lexicon = {**bias.LEXICON, **cfg.lexicon}
    prompts = [p for p, _ in pairs]
    probes = bias.probe_prompts(prompts, lexicon, cfg.max_prompts)
    out: dict[str, Any] = {"max_gap": cfg.max_gap, "on_gap": cfg.on_gap, "dimensions": {}}
    for dimension, found in probes.items():
        if not found:
            out["dimensions"][dimension] = {"prompts": 0, "note": "no test prompt contains a lexicon term"}
            continue
        groups = list(found[0][1])
        answers, scores = {}, {}
        for group in groups:
            answers[group] = generator.generate([copies[group] for _, copies in found],
                                                f"bias {dimension}: {group}")
            scores[group] = [score(recipe.eval.metric, a, pairs[i][1], recipe.eval.json_fields) or 0.0
                             for a, (i, _) in zip(answers[group], found, strict=True)]
        summary = bias.summarise(found, answers, scores)
        summary["exceeds_max_gap"] = summary["gap"] > cfg.max_gap
        out["dimensions"][dimension] = summary
    return out


def run(recipe: Recipe, run_dir: RunDir, generator_factory: Any = None) -> EvalResult:
    """Evaluate the run's model; `generator_factory(model, tokenizer)` swaps in a fake for tests."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = recipe.eval
    splits = load_splits(run_dir)
    tokenizer, tuned, as_base = _models(recipe, run_dir)
    bf16 = generation_bf16(recipe, resolve_device(recipe.model))
    labels = bool(cfg.label_field) or "label" in (splits.get("train") or [{}])[0]

    def generator_for(model: Any) -> Generator:
        if generator_factory is not None:
            return generator_factory(model, tokenizer)
        return HFGenerator(model, tokenizer, cfg.max_new_tokens, cfg.batch_size, bf16)

    summary: dict[str, Any] = {"metric": cfg.metric, "sets": {}, "validation": {}, "warnings": []}
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
    test_pairs: tuple[list, list] | None = None
    for name, records in splits.items():
        if name in NOT_EVAL_SETS or not records:
            continue
        records = records[: cfg.max_examples]
        pairs = [prompt_and_reference(r, recipe.data.system_prompt) for r in records]
        if name == "test" or test_pairs is None:
            test_pairs = (records, pairs)
        answers: dict[str, list[str]] = {}
        generator = generator_for(tuned)
        answers["finetuned"] = generator.generate([p for p, _ in pairs], f"{name} (fine-tuned)")
        speeds.append(getattr(generator, "examples_per_second", 0.0))
        if cfg.baseline:
            with as_base() as base:
                answers["base"] = generator_for(base).generate([p for p, _ in pairs], f"{name} (base)")
        references = [ref for _, ref in pairs]
        rows = [{"set": name, "index": i, "meta": record["meta"], "prompt": prompt[-1]["content"],
                 "reference": reference}
                for i, (record, (prompt, reference)) in enumerate(zip(records, pairs, strict=True))]
        set_summary: dict[str, Any] = {"examples": len(records), "metrics": {}}
        per_example: dict[str, dict[str, list[float]]] = {}
        for model_name, outputs in answers.items():
            metrics, per_example[model_name] = set_scores(outputs, references, cfg.metric,
                                                          cfg.json_fields, cfg.label_field, labels)
            set_summary["metrics"][model_name] = metrics
            for row, output in zip(rows, outputs, strict=True):
                row[f"{model_name}_prediction"] = output
                row[f"{model_name}_score"] = score(cfg.metric, output, row["reference"], cfg.json_fields)
            if cfg.metric != "none":
                set_summary[model_name] = metrics[cfg.metric]["value"]
                set_summary[f"{model_name}_ci"] = [metrics[cfg.metric]["ci_low"],
                                                   metrics[cfg.metric]["ci_high"]]
        if "base" in answers and cfg.metric != "none":
            set_summary["paired"] = _paired(cfg.metric, per_example["base"][cfg.metric],
                                            per_example["finetuned"][cfg.metric])
            set_summary["delta"] = set_summary["paired"]["delta"]
        for row in rows:
            hit_limit = len(tokenizer(row["finetuned_prediction"], add_special_tokens=False)[
                "input_ids"]) >= cfg.max_new_tokens
            row["finetuned_error"] = analysis.error_class(
                row["finetuned_prediction"], row["reference"], (row["finetuned_score"] or 0) >= 1,
                hit_limit, cfg.label_field)
        set_summary["errors"] = dict(sorted(
            {c: sum(r["finetuned_error"] == c for r in rows) for c in
             {r["finetuned_error"] for r in rows}}.items()))
        set_summary["worst_examples"] = analysis.worst_examples(rows, "finetuned_score", cfg.worst_examples)
        label_metrics = set_summary["metrics"]["finetuned"].get("labels")
        if label_metrics:
            set_summary["top_confusions"] = analysis.top_confusions(label_metrics["confusion"])
        set_summary["slices"] = _slices(rows, "finetuned_score")
        summary["sets"][name] = set_summary
        predictions += rows

    summary["generation_examples_per_second"] = (sum(speeds) / len(speeds)) if speeds else None
    if run_dir.train_log.exists():
        summary["generalisation"] = analysis.loss_curves(read_jsonl(run_dir.train_log))
    if test_pairs is not None and splits.get("train"):
        train_answers = [m["content"] for r in splits["train"] for m in r.get("messages", [])
                         if m["role"] == "assistant"]
        probe_set = "test" if "test" in summary["sets"] else next(iter(summary["sets"]))
        test_predictions = [r["finetuned_prediction"] for r in predictions if r["set"] == probe_set]
        summary.setdefault("generalisation", {})["memorisation"] = analysis.memorisation_rate(
            test_predictions, train_answers)
    if cfg.forgetting_probe:
        summary["forgetting"] = _forgetting(generator_for, tuned, as_base, cfg.baseline)
    if cfg.bias.enabled and test_pairs is not None and cfg.metric != "none":
        summary["bias"] = _bias(recipe, test_pairs[0], test_pairs[1], generator_for(tuned))
        for dimension, result in summary["bias"]["dimensions"].items():
            if result.get("exceeds_max_gap"):
                summary["warnings"].append(
                    f"bias: {dimension} gap {result['gap']:.3f} exceeds eval.bias.max_gap "
                    f"{cfg.bias.max_gap} (per group: "
                    + ", ".join(f"{g} {v:.3f}" for g, v in result["per_group"].items()) + ")")

    run_dir.eval.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.eval_summary, summary)
    write_jsonl(run_dir.predictions, predictions)
    gate = None
    if cfg.bias.on_gap == "fail" and any("bias:" in w for w in summary["warnings"]):
        gate = ("; ".join(w for w in summary["warnings"] if w.startswith("bias:"))
                + f". Results are in {(run_dir.home or run_dir.root) / 'eval'}; set eval.bias.on_gap: warn "
                "to continue despite the gap.")
    return EvalResult(summary, predictions, gate)
