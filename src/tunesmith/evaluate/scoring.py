"""Scoring the run's model, one function per kind of set, each returning a typed result
(`tunesmith.artifacts`): validation loss, an evaluation set, the forgetting probe, bias probes.

An `Evaluation` holds what every one of them needs: the recipe, the fine-tuned model and the
way to its base, and the generators that answer prompts (a fake in tests).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from tunesmith.artifacts import (
    Bias,
    BiasDimension,
    Forgetting,
    Interval,
    Loss,
    Paired,
    Prediction,
    ReasoningStats,
    SetResult,
    Slice,
    Validation,
)
from tunesmith.evaluate import analysis, bias
from tunesmith.evaluate.generation import Generator
from tunesmith.evaluate.metrics import score, set_scores
from tunesmith.evaluate.stats import bootstrap_ci, mcnemar, paired_bootstrap
from tunesmith.models.chat import opens_thinking, prompt_and_reference, training_rows
from tunesmith.models.classifier import majority_accuracy
from tunesmith.models.families import Family
from tunesmith.models.families.causal_lm import IGNORE
from tunesmith.models.loading import RunModel
from tunesmith.recipe import Recipe
from tunesmith.records import split_reasoning

BINARY_METRICS = ("exact_match", "json_fields", "json_valid")


@dataclass
class Evaluation:
    recipe: Recipe
    run_model: RunModel
    family: Family
    generator_for: Callable[[Any], Generator]
    """A generator answering with the given model (fine-tuned or base)."""
    labels: bool
    """Answers are labels (classification data, or eval.label_field set): label metrics too."""
    label_field: str | None = None
    """The JSON field of an answer that is its label (eval.label_field; None for a classifier,
    whose answers and references are the labels themselves)."""
    reference_of: Callable[[dict], tuple[list[dict], str]] | None = None
    """A record's (prompt, reference); None: the conversation and its last answer."""
    base_generator_for: Callable[[Any], Generator] | None = None
    """The baseline's answers from the base model; None: generator_for (an encoder: its k-NN)."""
    train_labels: list[str] = field(default_factory=list)
    """A classifier's training labels, for the majority-class floor."""
    speeds: list[float] = field(default_factory=list)
    """Examples per second of the fine-tuned model's generation, one per evaluation set."""

    def pair(self, record: dict) -> tuple[list[dict], str]:
        if self.reference_of is not None:
            return self.reference_of(record)
        return prompt_and_reference(record, self.recipe.data.system_prompt)

    def answers(self, prompts: list[list[dict]], label: str, measure: bool = False) -> dict[str, list[str]]:
        """The fine-tuned model's answers, and the base model's when eval.baseline is on."""
        generator = self.generator_for(self.run_model.model)
        out = {"finetuned": generator.generate(prompts, f"{label} (fine-tuned)")}
        if measure:
            self.speeds.append(getattr(generator, "examples_per_second", 0.0))
        if self.recipe.eval.baseline:
            with self.run_model.as_base() as base:
                out["base"] = (self.base_generator_for or self.generator_for)(base).generate(
                    prompts, f"{label} (base)")
        return out


def interval(values: list[float]) -> Interval | None:
    """The mean of `values` with its bootstrap 95% CI; None for no values."""
    if not values:
        return None
    low, high = bootstrap_ci(values)
    return Interval(value=sum(values) / len(values), ci_low=low, ci_high=high)


def paired(metric: str, base: list[float], tuned: list[float]) -> Paired:
    result = Paired.model_validate(paired_bootstrap(base, tuned))
    if metric in BINARY_METRICS:
        result.mcnemar = mcnemar(base, tuned)
    return result


def _mean_loss(model: Any, family: Family, batches: Iterator[tuple[dict[str, Any], Any]]) -> float:
    """Token- (or example-) weighted mean of the family's loss over (model inputs, labels) batches."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for inputs, labels in batches:
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
            batch_total, batch_count = family.answer_loss_sum(logits, labels)
            total += float(batch_total)
            count += int(batch_count)
    return total / max(count, 1)


def _padded(rows: list[list[int]], value: int) -> Any:
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def mean_answer_loss(model: Any, tokenizer: Any, records: list[dict], recipe: Recipe,
                     family: Family) -> float:
    """Token-weighted mean cross-entropy over the loss-masked tokens of `records` (a decoder's:
    the chat rendering with the answer mask; an encoder-decoder's: the answer's tokens)."""
    size = recipe.eval.batch_size
    if family.name == "seq2seq":
        from tunesmith.models.families.seq2seq import tokenize_pair

        system, limit = recipe.data.system_prompt, recipe.train.max_length
        rows = [tokenize_pair(tokenizer, *prompt_and_reference(r, system), limit) for r in records]

        def pairs() -> Iterator[tuple[dict[str, Any], Any]]:
            for batch in (rows[i:i + size] for i in range(0, len(rows), size)):
                labels = _padded([r["labels"] for r in batch], IGNORE)
                yield {"input_ids": _padded([r["input_ids"] for r in batch], tokenizer.pad_token_id),
                       "attention_mask": _padded([r["attention_mask"] for r in batch], 0),
                       "labels": labels}, labels
        return _mean_loss(model, family, pairs())
    rows = training_rows(tokenizer, records, recipe.train, recipe.data.system_prompt)

    def batches() -> Iterator[tuple[dict[str, Any], Any]]:
        for batch in (rows[i:i + size] for i in range(0, len(rows), size)):
            yield ({"input_ids": _padded([r["input_ids"] for r in batch], tokenizer.pad_token_id),
                    "attention_mask": _padded([[1] * len(r["input_ids"]) for r in batch], 0)},
                   _padded([[t if keep else IGNORE for t, keep in zip(r["input_ids"], r["assistant_masks"],
                                                                     strict=True)] for r in batch], IGNORE))
    return _mean_loss(model, family, batches())


def mean_label_loss(model: Any, tokenizer: Any, records: list[dict], recipe: Recipe, family: Family) -> float:
    """A classifier's mean cross-entropy over the records whose label its head knows."""
    import torch

    from tunesmith.models.classifier import example

    index, size = model.config.label2id, recipe.eval.batch_size
    pairs = [(t, index[label]) for t, label in (example(r, recipe.eval.label_field) for r in records)
             if label in index]

    def batches() -> Iterator[tuple[dict[str, Any], Any]]:
        for batch in (pairs[i:i + size] for i in range(0, len(pairs), size)):
            yield (dict(tokenizer([t for t, _ in batch], padding=True, truncation=True,
                                  max_length=recipe.train.max_length, return_tensors="pt")),
                   torch.tensor([i for _, i in batch]))
    return _mean_loss(model, family, batches())


def validation(ev: Evaluation, records: list[dict]) -> Validation:
    """Loss and perplexity on the answer tokens of the validation split, as in training (a
    classifier: the head's cross-entropy; its base has a random head, so no base loss)."""
    loss_fn = mean_answer_loss if ev.family.generates else mean_label_loss

    def loss_of(model: Any) -> Loss:
        loss = loss_fn(model, ev.run_model.tokenizer, records, ev.recipe, ev.family)
        return Loss(loss=loss, perplexity=math.exp(loss))

    result = Validation(finetuned=loss_of(ev.run_model.model))
    if ev.recipe.eval.baseline and ev.family.generates:
        with ev.run_model.as_base() as base:
            result.base = loss_of(base)
    return result


def _slices(rows: list[Prediction]) -> dict[str, Slice]:
    groups: dict[str, list[float]] = {}
    for row in rows:
        group = row.meta.get("group")
        if group not in (None, "") and row.finetuned_score is not None:
            groups.setdefault(str(group), []).append(row.finetuned_score)
    return {g: Slice(examples=len(v), value=sum(v) / len(v)) for g, v in sorted(groups.items())}


def split_answers(outputs: dict[str, list[str]], opened: bool = False
                  ) -> tuple[dict[str, list[str]], dict[str, list[str | None]]]:
    """Each model's outputs as (answers, reasoning): a <think> block is taken off before scoring
    (`opened`: the chat template's generation prompt opened it)."""
    answers, reasoning = {}, {}
    for model, texts in outputs.items():
        parts = [split_reasoning(text, opened) for text in texts]
        reasoning[model], answers[model] = [r for r, _ in parts], [a for _, a in parts]
    return answers, reasoning


def reasoning_stats(tokenizer: Any, reasoning: dict[str, list[str | None]],
                    answers: dict[str, list[str]]) -> dict[str, ReasoningStats]:
    stats = {}
    for model, thoughts in reasoning.items():
        found = [(t, a) for t, a in zip(thoughts, answers[model], strict=True) if t is not None]
        if found:
            tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in found]
            stats[model] = ReasoningStats(answers_with_reasoning=len(found),
                                          mean_reasoning_tokens=sum(tokens) / len(tokens),
                                          unfinished=sum(1 for _, a in found if not a.strip()))
    return stats


def _predictions(name: str, records: list[dict], pairs: list, answers: dict[str, list[str]],
                 ev: Evaluation, reasoning: dict[str, list[str | None]] | None = None) -> list[Prediction]:
    cfg = ev.recipe.eval
    reasoning = reasoning or {}
    rows = []
    for i, (record, (prompt, reference)) in enumerate(zip(records, pairs, strict=True)):
        row = Prediction(set=name, index=i, meta=record["meta"], prompt=prompt[-1]["content"],
                         reference=reference, finetuned_prediction=answers["finetuned"][i])
        row.finetuned_score = score(cfg.metric, row.finetuned_prediction, reference, cfg.json_fields)
        if reasoning.get("finetuned"):
            row.finetuned_reasoning = reasoning["finetuned"][i]
        if "base" in answers:
            row.base_prediction = answers["base"][i]
            row.base_score = score(cfg.metric, row.base_prediction, reference, cfg.json_fields)
            if reasoning.get("base"):
                row.base_reasoning = reasoning["base"][i]
        hit_limit = len(ev.run_model.tokenizer(row.finetuned_prediction, add_special_tokens=False)[
            "input_ids"]) >= cfg.max_new_tokens
        correct = (row.finetuned_score or 0) >= 1
        row.finetuned_error = analysis.error_class(row.finetuned_prediction, reference, correct, hit_limit,
                                                   ev.label_field)
        rows.append(row)
    return rows


def score_set(ev: Evaluation, name: str, records: list[dict]) -> tuple[SetResult, list[Prediction], list]:
    """Both models answer the set's prompts; every metric with its CI, the paired delta, error
    classes, worst examples, confusions and group slices. Also returns the (prompt, reference)
    pairs, which the bias probes reuse."""
    cfg = ev.recipe.eval
    pairs = [ev.pair(r) for r in records]
    references = [ref for _, ref in pairs]
    opened = ev.family.generates and opens_thinking(ev.run_model.tokenizer)
    answers, reasoning = split_answers(ev.answers([p for p, _ in pairs], name, measure=True), opened)
    scores = {model: set_scores(outputs, references, cfg.metric, cfg.json_fields, ev.label_field, ev.labels)
              for model, outputs in answers.items()}
    rows = _predictions(name, records, pairs, answers, ev, reasoning)
    result = SetResult(examples=len(records), finetuned=scores["finetuned"][0],
                       reasoning=reasoning_stats(ev.run_model.tokenizer, reasoning, answers),
                       base=scores["base"][0] if "base" in scores else None,
                       errors=dict(sorted(Counter(r.finetuned_error for r in rows).items())),
                       worst_examples=analysis.worst_examples(rows, cfg.worst_examples),
                       slices=_slices(rows))
    if ev.train_labels:
        result.majority = majority_accuracy(ev.train_labels, references)
    if "base" in scores and cfg.metric != "none":
        result.paired = paired(cfg.metric, scores["base"][1][cfg.metric],
                               scores["finetuned"][1][cfg.metric])
    if result.finetuned.labels:
        result.top_confusions = analysis.top_confusions(result.finetuned.labels.confusion.labels,
                                                        result.finetuned.labels.confusion.matrix)
    return result, rows, pairs


def _probe_accepts(answer: str, accepted: list[str]) -> float:
    return float(any(re.search(r"(?<!\w)" + re.escape(a.lower()) + r"(?!\w)", answer.lower())
                     for a in accepted))


def forgetting(ev: Evaluation) -> Forgetting:
    """The bundled general-question probe, scored for both models: what fine-tuning cost."""
    probes = [json.loads(line) for line in
              (files("tunesmith.evaluate") / "probes" / "general.jsonl").read_text().splitlines()]
    answers = ev.answers([[{"role": "user", "content": p["prompt"]}] for p in probes], "forgetting probe")
    scores = {model: [_probe_accepts(a, p["accept"]) for a, p in zip(outputs, probes, strict=True)]
              for model, outputs in answers.items()}
    result = Forgetting(examples=len(probes), finetuned=sum(scores["finetuned"]) / len(probes))
    if "base" in scores:
        result.base = sum(scores["base"]) / len(probes)
        result.paired = paired("exact_match", scores["base"], scores["finetuned"])
    return result


def bias_probes(ev: Evaluation, pairs: list) -> Bias:
    """Counterfactual copies of the test prompts with one demographic term swapped: the metric
    per group, the largest gap, and how often the answer changed with the group alone."""
    cfg, metric = ev.recipe.eval.bias, ev.recipe.eval
    probes = bias.probe_prompts([p for p, _ in pairs], {**bias.LEXICON, **cfg.lexicon}, cfg.max_prompts)
    generator = ev.generator_for(ev.run_model.model)
    out = Bias(max_gap=cfg.max_gap, on_gap=cfg.on_gap)
    for dimension, found in probes.items():
        if not found:
            out.dimensions[dimension] = BiasDimension(prompts=0,
                                                      note="no test prompt contains a lexicon term")
            continue
        answers, scores = {}, {}
        for group in found[0][1]:
            answers[group] = generator.generate([copies[group] for _, copies in found],
                                                f"bias {dimension}: {group}")
            scores[group] = [score(metric.metric, a, pairs[i][1], metric.json_fields) or 0.0
                             for a, (i, _) in zip(answers[group], found, strict=True)]
        result = bias.summarise(found, answers, scores)
        result.exceeds_max_gap = result.gap > cfg.max_gap
        out.dimensions[dimension] = result
    return out
