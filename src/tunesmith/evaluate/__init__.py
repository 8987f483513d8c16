"""The evaluate stage: the base model and the fine-tuned model on the same examples.

    tunesmith eval recipes/demo.yaml

`run(recipe, run_dir)` writes `eval/summary.json` (`artifacts.EvalSummary`) and
`eval/predictions.jsonl` (`artifacts.Prediction` rows) with:
- validation loss and perplexity on answer tokens (as in training), base and fine-tuned;
- per evaluation set (test and each `data.eval_sets`, e.g. out-of-domain): greedy answers of
  both models to the same prompts, every metric with a bootstrap 95% CI, the paired delta of the
  primary metric with its CI, a paired bootstrap p-value and (for 0/1 metrics) McNemar's test;
  label metrics and a confusion matrix where answers are labels; per-`meta.group` slices;
- error analysis: an error class for every fine-tuned answer, the worst examples, top confusions;
- generalisation: train/validation loss curves and their final gap, and a memorisation probe;
- forgetting: a bundled general-question probe scored for both models, or the benchmarks' items;
- benchmarks (eval.benchmarks): lm-evaluation-harness tasks, base and fine-tuned paired per item;
- judge (eval.judge): an LLM judge's grades and pairwise verdicts (eval/judge.jsonl per example);
- bias: counterfactual prompts with demographic terms swapped, metric per group, the largest
  gap and the share of answers that changed; a gap over `eval.bias.max_gap` warns or fails.

    scoring.py     one scoring function per kind of set, each returning a typed result
    benchmarks.py  lm-evaluation-harness tasks on both models, paired per item
    judge.py       an OpenAI-compatible judge: grades, pairwise verdicts, agreement with people
    generation.py  batched greedy generation (the Generator protocol; tests pass a fake)
    parallel.py    --processes N: that generation in N worker processes, one device each
    metrics.py, stats.py, analysis.py, bias.py   metrics, CIs and tests, error analysis, lexicon
    table.py       the before/after table printed at the end
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.artifacts import EvalSummary, LogEntry, Prediction, load_rows, save, save_rows
from tunesmith.data import load_splits
from tunesmith.evaluate import analysis, benchmarks, judge
from tunesmith.evaluate.generation import Generator, HFGenerator, Seq2SeqGenerator
from tunesmith.evaluate.scoring import Evaluation, bias_probes, forgetting, score_set, validation
from tunesmith.models.device import generation_bf16, resolve_device
from tunesmith.models.families import family_for
from tunesmith.models.loading import load_run_model
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir

NOT_EVAL_SETS = ("train", "val")


@dataclass
class EvalResult:
    summary: EvalSummary
    predictions: list[Prediction]
    gate_failure: str | None = None
    """Why a quality gate (eval.bias.on_gap: fail) failed; the caller raises after committing."""


def _evaluation(recipe: Recipe, run_dir: RunDir, splits: dict[str, list[dict]],
                generator_factory: Any, pool: Any = None) -> Evaluation:
    cfg = recipe.eval
    run_model = load_run_model(recipe.model, recipe.train.weights, run_dir.model)
    family = family_for(recipe.model)
    bf16 = generation_bf16(recipe, resolve_device(recipe.model))
    if pool is not None:  # parallel.py: generation in the pool's workers, the rest here
        labels = bool(cfg.label_field) or "label" in (splits.get("train") or [{}])[0]
        return Evaluation(recipe, run_model, family, lambda model: pool.generator(base=False), labels,
                          cfg.label_field, base_generator_for=lambda base: pool.generator(base=True))

    def generator_for(model: Any) -> Generator:
        if generator_factory is not None:
            return generator_factory(model, run_model.tokenizer)
        if family.name == "seq2seq":
            return Seq2SeqGenerator(model, run_model.tokenizer, cfg.max_new_tokens, cfg.batch_size,
                                    recipe.train.max_length)
        return HFGenerator(model, run_model.tokenizer, cfg.max_new_tokens, cfg.batch_size, bf16, family)

    labels = bool(cfg.label_field) or "label" in (splits.get("train") or [{}])[0]
    if family.generates:
        return Evaluation(recipe, run_model, family, generator_for, labels, cfg.label_field)
    return _classifier_evaluation(recipe, run_model, family, splits, generator_factory)


def _classifier_evaluation(recipe: Recipe, run_model: Any, family: Any, splits: dict[str, list[dict]],
                           generator_factory: Any) -> Evaluation:
    """An encoder: answers are the head's labels, references the records' labels, and the
    baseline a k-NN over the frozen encoder's embeddings of the training split."""
    from tunesmith.models.classifier import ClassifierPredictor, KNNPredictor, example

    cfg = recipe.eval
    config = run_model.model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    train = [example(r, cfg.label_field) for r in splits.get("train", [])]

    def reference_of(record: dict) -> tuple[list[dict], str]:
        text, label = example(record, cfg.label_field)
        return [{"role": "user", "content": text}], label

    def generator_for(model: Any) -> Generator:
        if generator_factory is not None:
            return generator_factory(model, run_model.tokenizer)
        return ClassifierPredictor(model, run_model.tokenizer, labels, cfg.batch_size,
                                   recipe.train.max_length)

    # one k-NN per evaluation: its training embeddings are computed once, with the base encoder
    knn = KNNPredictor(None, run_model.tokenizer, [t for t, _ in train], [lb for _, lb in train],
                       k=cfg.knn_neighbours, batch_size=cfg.batch_size, max_length=recipe.train.max_length)

    def knn_for(base: Any) -> Generator:
        knn.model = base
        return knn

    return Evaluation(recipe, run_model, family, generator_for, True, None, reference_of,
                      knn_for if train else None, [lb for _, lb in train])


def _memorisation(summary: EvalSummary, predictions: list[Prediction], train: list[dict]) -> None:
    """How often an answer to a held-out prompt reproduces a training answer verbatim."""
    train_answers = [m["content"] for r in train for m in r.get("messages", []) if m["role"] == "assistant"]
    probe_set = "test" if "test" in summary.sets else next(iter(summary.sets))
    answers = [r.finetuned_prediction for r in predictions if r.set == probe_set]
    if summary.generalisation is None:
        summary.generalisation = analysis.loss_curves([])
    summary.generalisation.memorisation = analysis.memorisation_rate(answers, train_answers)


def _bias_warnings(summary: EvalSummary, max_gap: float) -> None:
    for dimension, result in summary.bias.dimensions.items():
        if result.exceeds_max_gap:
            summary.warnings.append(
                f"bias: {dimension} gap {result.gap:.3f} exceeds eval.bias.max_gap {max_gap} (per group: "
                + ", ".join(f"{g} {v:.3f}" for g, v in result.per_group.items()) + ")")


def run(recipe: Recipe, run_dir: RunDir, generator_factory: Any = None, processes: int = 1) -> EvalResult:
    """Evaluate the run's model; `generator_factory(model, tokenizer)` swaps in a fake for tests;
    `processes` > 1 generates in that many worker processes (parallel.py; decoders)."""
    pool = None
    if processes > 1 and generator_factory is None and recipe.model.family == "causal_lm":
        from tunesmith.evaluate.parallel import GenerationPool

        pool = GenerationPool(recipe, run_dir.model, processes).start()
    try:
        return _run(recipe, run_dir, generator_factory, pool)
    finally:
        if pool is not None:
            pool.close()


def _run(recipe: Recipe, run_dir: RunDir, generator_factory: Any, pool: Any) -> EvalResult:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = recipe.eval
    if cfg.benchmarks.tasks:  # before any generation: a wrong task file or name fails at once
        benchmarks.harness_version()
        benchmarks.resolve(cfg.benchmarks.tasks)
    if cfg.judge.url:
        judge.check_reachable(cfg.judge)
    splits = load_splits(run_dir)
    ev = _evaluation(recipe, run_dir, splits, generator_factory, pool)
    summary = EvalSummary(metric=cfg.metric)
    if not ev.family.generates:
        summary.baseline = f"k-NN (k={cfg.knn_neighbours}) over the frozen encoder's embeddings"
    if splits.get("val"):
        summary.validation = validation(ev, splits["val"][: cfg.max_examples])
    predictions: list[Prediction] = []
    test_pairs = None
    for name, records in splits.items():
        if name in NOT_EVAL_SETS or not records:
            continue
        summary.sets[name], rows, pairs = score_set(ev, name, records[: cfg.max_examples])
        predictions += rows
        if name == "test" or test_pairs is None:
            test_pairs = pairs
    summary.generation_examples_per_second = sum(ev.speeds) / len(ev.speeds) if ev.speeds else None
    summary.generation_processes = len(pool.workers) if pool is not None else 1
    if run_dir.train_log.exists():
        summary.generalisation = analysis.loss_curves(load_rows(LogEntry, run_dir.train_log))
    if test_pairs is not None and splits.get("train") and ev.family.generates:
        _memorisation(summary, predictions, splits["train"])
    if cfg.benchmarks.tasks and ev.family.generates:
        summary.benchmarks = benchmarks.run(ev)
    if summary.benchmarks is not None and cfg.benchmarks.forgetting:
        summary.forgetting = benchmarks.forgetting(summary.benchmarks)
    elif cfg.forgetting_probe and ev.family.generates:  # a classifier has no general knowledge to probe
        summary.forgetting = forgetting(ev)
    if cfg.bias.enabled and test_pairs is not None and cfg.metric != "none":
        summary.bias = bias_probes(ev, test_pairs)
        _bias_warnings(summary, cfg.bias.max_gap)
    if cfg.judge.url:
        summary.judge, grades = judge.run(cfg.judge, predictions)
        save_rows(grades, run_dir.judge_grades)
    save(summary, run_dir.eval_summary)
    save_rows(predictions, run_dir.predictions)
    gate = None
    if cfg.bias.on_gap == "fail" and any(w.startswith("bias:") for w in summary.warnings):
        gate = ("; ".join(w for w in summary.warnings if w.startswith("bias:"))
                + f". Results are in {(run_dir.home or run_dir.root) / 'eval'}; set eval.bias.on_gap: warn "
                "to continue despite the gap.")
    return EvalResult(summary, predictions, gate)
