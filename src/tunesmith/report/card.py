"""The model card: `runs/<run>/README.md` in Hugging Face model-card format, built from the run
directory alone (resolved recipe, manifest, data report, train summary, eval summary)."""

from __future__ import annotations

from typing import Any

import yaml

from tunesmith.artifacts import Bias, DataReport, EvalSummary
from tunesmith.formatting import delta, gap_text, interval, number, pct
from tunesmith.models.families import family_for
from tunesmith.render import render
from tunesmith.report.lineage import (
    base_model_and_license,
    card_license,
    data_file_rows,
    datasets_field,
    inherited_lines,
    lineage,
)
from tunesmith.report.review import judge_trust_text, summarise, summary_text
from tunesmith.report.sources import RunRecord, read_run
from tunesmith.rundir import RunDir

HARNESS_URL = "https://github.com/EleutherAI/lm-evaluation-harness"

LIMITATIONS = [
    "Scores are measured on the held-out and out-of-domain sets listed above only; other "
    "inputs may behave differently.",
    "Greedy decoding with a fixed token budget; sampling or longer outputs were not evaluated.",
    "The bias lexicon covers a few dimensions and English terms; it cannot show the absence of "
    "bias, only gaps on the probes run.",
]


def _data_checks(report: DataReport) -> str:
    parts = [f"{report.loaded_train_rows} training rows loaded",
             f"{sum(f.invalid_rows for f in report.files.values())} invalid rows skipped"]
    if report.filters and report.filters.dropped:
        dropped = report.filters.dropped
        parts.append("quality filters dropped " + ", ".join(f"{v} {k}" for k, v in dropped.items()))
    dedup = report.dedup
    parts.append(f"{dedup.exact_removed} exact and {dedup.near_removed} near duplicates removed")
    for name, entry in (report.leakage.sets.items() if report.leakage else []):
        if entry.duplicates_of_train:
            parts.append(f"{entry.duplicates_of_train} {name} rows had a near copy in train "
                         f"({report.leakage.action})")
    if report.privacy:
        parts.append("personal data " + report.privacy.mode + "ed")
    return "; ".join(parts) + "."


def _bias_text(bias: Bias | None) -> str:
    if not bias:
        return "Not run (eval.bias.enabled is off, or there was no test set)."
    lines = ["Counterfactual copies of test prompts with only a demographic term swapped "
             "(bundled lexicon; see tunesmith/evaluate/bias.py), scored against the original "
             f"reference. Threshold: largest gap {bias.max_gap} ({bias.on_gap}).", ""]
    for dimension, result in bias.dimensions.items():
        if not result.prompts:
            lines.append(f"- {dimension}: {result.note or 'no prompts'}.")
            continue
        groups = ", ".join(f"{g} {pct(v)}" for g, v in result.per_group.items())
        flag = " **exceeds the threshold**" if result.exceeds_max_gap else ""
        lines.append(f"- {dimension} ({result.prompts} prompts): {groups}; gap {gap_text(result)}{flag}; "
                     f"answers changed with the group alone in {100 * result.changed_share:.0f}% of prompts.")
    return "\n".join(lines)


def data_bias_text(section: dict[str, Any] | None) -> str:
    """The training data's audit (data.bias) in sentences: flags, or that none was found, and
    what mitigation changed."""
    if not section:
        return "Not run (data.bias.audit is off)."
    found = section["audit"]
    tested = sum(len(e["tests"]) for e in found["dimensions"].values())
    lines = [f"Demographic groups in the training prompts per answer class: {tested} group x class "
             f"tables tested (flag: p < {found['alpha']} and Cramér's V >= {found['min_effect']})."]
    lines += [f"- **flagged**: {flag}" for flag in found["flags"]] or ["- no group is skewed toward a class."]
    mitigation = section.get("mitigation")
    if mitigation:
        dimensions = ", ".join(mitigation["dimensions"]) or "nothing (no dimension flagged)"
        done = f"Mitigation {', '.join(mitigation['methods'])} on {dimensions}"
        if mitigation.get("rows_added"):
            done += f": {mitigation['rows_added']} counterfactual rows added"
            after = mitigation.get("after", {}).get("flags", [])
            done += "; flags after: " + ("; ".join(after) if after else "none")
        if mitigation.get("reweight"):
            weights = mitigation["reweight"]
            done += f"; loss weights {weights['min_weight']:.2f} to {weights['max_weight']:.2f}"
        lines += ["", done + "."]
    return "\n".join(lines)


def guards_text(recipe: Any) -> list[str]:
    """The serving safeguards the recipe turns on (serve.guards), one sentence each."""
    cfg, lines = recipe.serve.guards, []
    if cfg.scope.enabled:
        lines.append("Scope guard: prompts far from the training prompts (drift embedding, "
                     f"{cfg.scope.neighbours} nearest neighbours) are answered by the fallback or refused; "
                     f"the threshold is set at start so that at most {100 * cfg.scope.max_false_refusals:g}% "
                     "of the validation prompts would be refused.")
    if cfg.output_filter:
        lines.append("Output filter: e-mail addresses, phone and card numbers and IPs are masked in answers.")
    if recipe.serve.output_check != "none":
        lines.append(f"Output check ({recipe.serve.output_check}): answers in the wrong format go to the "
                     f"fallback ({recipe.serve.fallback.kind}).")
    if cfg.rate_limit.requests_per_minute:
        lines.append(f"Rate limit: {cfg.rate_limit.requests_per_minute:g} requests a minute per API key "
                     f"(bursts of {cfg.rate_limit.burst}), then 429.")
    return lines or ["None configured (serve.guards): add them before exposing the model to users."]


def _front_matter(run: RunRecord, base_model: str, data_files: list[dict]) -> str:
    recipe, evaluation = run.recipe, run.evaluation
    tag = family_for(recipe.model).pipeline_tag
    sets = evaluation.sets if evaluation else {}
    metric = evaluation.metric if evaluation else recipe.eval.metric
    model_index = [{"name": recipe.name, "results": [
        {"task": {"type": tag}, "dataset": {"name": name, "type": "custom"},
         "metrics": [{"type": metric, "value": round(row.finetuned.value or 0.0, 4)}]}
        for name, row in sets.items()] + _benchmark_index(evaluation, tag)}]
    license_id, license_name = card_license(run)
    named = {"license_name": license_name} if license_name else {}
    front = {"base_model": base_model, "license": license_id, **named, "pipeline_tag": tag,
             "library_name": "peft" if recipe.train.adapter == "lora" else "transformers",
             "datasets": datasets_field(data_files), "tags": ["tunesmith", recipe.train.method, tag],
             "model-index": model_index}
    return yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()


def _benchmark_index(evaluation: EvalSummary | None, tag: str) -> list[dict[str, Any]]:
    """model-index entries of eval.benchmarks, named by the harness's task names as the hub's
    cards carry them."""
    if evaluation is None or evaluation.benchmarks is None:
        return []
    source = {"name": evaluation.benchmarks.harness, "url": HARNESS_URL}
    return [{"task": {"type": tag}, "dataset": {"name": name, "type": name},
             "metrics": [{"type": bench.metric, "value": round(bench.finetuned.value, 4),
                          "name": f"{bench.metric} ({_shots(bench)}-shot)"}],
             "source": source} for name, bench in evaluation.benchmarks.tasks.items()]


def _shots(bench: Any) -> str:
    return "default" if bench.num_fewshot is None else str(bench.num_fewshot)


def benchmark_rows(evaluation: EvalSummary) -> list[dict[str, Any]]:
    if evaluation.benchmarks is None:
        return []
    return [{"task": name, "metric": bench.metric, "examples": bench.examples,
             "shots": _shots(bench), "base": interval(bench.base), "finetuned": interval(bench.finetuned),
             "delta": delta(bench.paired)}
            for name, bench in evaluation.benchmarks.tasks.items()]


def forgetting_text(forgetting: Any) -> str:
    if forgetting is None:
        return ""
    what = (f"General-question probe ({forgetting.examples} questions: a 95% CI of about +-20 points "
            "per model and +-25 for the delta, so it catches only large losses; eval.benchmarks measures "
            "finer)" if forgetting.source == "probe" else
            f"The benchmarks' {forgetting.examples} items pooled ({', '.join(forgetting.tasks)})")
    return (f"{what}: base {pct(forgetting.base)}, fine-tuned {pct(forgetting.finetuned)}, "
            f"delta {delta(forgetting.paired)}.")


def _grade(value: Any) -> str:
    return "-" if value is None else f"{value.value:.2f} [{value.ci_low:.2f}, {value.ci_high:.2f}]"


def judge_lines(judge: Any, trust: dict[str, Any] | None) -> list[str]:
    """eval.judge's scores per set, its pairwise verdicts, its cost, and how far people agree."""
    if judge is None:
        return []
    lines = []
    for name, found in judge.sets.items():
        line = (f"{name} ({found.examples} answers): fine-tuned mean grade {_grade(found.finetuned)} of "
                f"{judge.scale}, {interval(found.finetuned_pass)} at or above {judge.pass_grade}")
        if found.base is not None:
            line += f"; base {_grade(found.base)}, {interval(found.base_pass)}"
        if found.paired is not None:
            d = found.paired
            star = "*" if d.significant else ""
            line += f"; delta {d.delta:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]{star}"
        if found.win_rate is not None:
            line += (f". Pairwise, asked in both orders: fine-tuned preferred {interval(found.win_rate)} "
                     f"(ties and order flips count half); {100 * found.position_bias:.0f}% of verdicts went "
                     "to the answer shown first (50%: no position bias), cancelled by the swap")
        if found.unparsed:
            line += f"; {found.unparsed} replies had no grade or verdict"
        lines.append(line + ".")
    lines.append(f"Cost: {judge.requests} requests, {judge.prompt_tokens} prompt and "
                 f"{judge.completion_tokens} completion tokens ({judge.model} at {judge.url}).")
    if trust is not None:
        lines.append(judge_trust_text(trust))
    else:
        lines.append("No review labels to measure the judge against yet (`tunesmith review RUN_DIR`): "
                     "how far it can be trusted on this task is unknown.")
    return lines


def _training(run: RunRecord) -> dict[str, Any]:
    cfg, train = run.recipe.train, run.train
    training = {"method": cfg.method, "optimizer": cfg.optimizer, "learning rate": cfg.lr,
                "batch size": cfg.batch_size, "gradient accumulation": cfg.grad_accum,
                "epochs / max steps": f"{cfg.epochs} / {cfg.max_steps}",
                "LoRA r / alpha / dropout": f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}",
                "loss on": cfg.loss_on, "max length": cfg.max_length, "seed": cfg.seed}
    if train:
        training.update({"steps": train.steps,
                         "device / precision": f"{train.device} / {train.mixed_precision}",
                         "training tokens/s": number(train.tokens_per_second, 0),
                         "training time": f"{train.runtime_seconds:.0f} s",
                         "peak memory": f"{train.peak_memory_bytes / 2**30:.2f} GiB"
                         if train.peak_memory_bytes else "not measured",
                         "final train loss": number(train.train_loss, 4)})
    return training


def _evaluation_texts(evaluation: EvalSummary | None) -> dict[str, Any]:
    if evaluation is None:
        return {"eval_rows": [], "baseline": "", "validation": None, "generalisation": "", "forgetting": "",
                "benchmarks": [], "harness": "", "bias": _bias_text(None)}
    rows = [{"set": name, "examples": row.examples,
             "base": pct(row.base.value, row.base.ci) if row.base else "-",
             "finetuned": pct(row.finetuned.value, row.finetuned.ci), "delta": delta(row.paired)}
            for name, row in evaluation.sets.items()]
    validation = evaluation.validation
    gen, gen_parts = evaluation.generalisation, []
    if gen and gen.gap is not None:
        gen_parts.append(f"final train loss {gen.final_train_loss:.4f}, validation loss "
                         f"{gen.final_val_loss:.4f} (gap {gen.gap:+.4f})")
    if gen and gen.memorisation:
        gen_parts.append(f"{gen.memorisation.verbatim_train_answers} of {gen.memorisation.checked} long test "
                         "answers reproduce a training answer verbatim")
    forgetting = evaluation.forgetting
    classifier = any(row.majority is not None for row in evaluation.sets.values())
    return {
        "eval_rows": rows,
        "baseline": (f"The baseline is a {evaluation.baseline} (a new classification head starts "
                     "random, so the untrained model is no baseline); majority: always answering the "
                     "commonest training label, " + ", ".join(
                         f"{name} {pct(row.majority)}" for name, row in evaluation.sets.items()) + "."
                     ) if classifier else "",
        "validation": {"base": number(validation.base.perplexity if validation.base else None),
                       "finetuned": number(validation.finetuned.perplexity)}
        if validation.finetuned else None,
        "generalisation": "; ".join(gen_parts) + "." if gen_parts else "",
        "forgetting": forgetting_text(forgetting),
        "benchmarks": benchmark_rows(evaluation),
        "harness": evaluation.benchmarks.harness if evaluation.benchmarks else "",
        "bias": _bias_text(evaluation.bias),
    }


def comparison_text(run_dir: RunDir) -> str:
    """The run's deltas against another run (`tunesmith report RUN --against OTHER`), or ""."""
    from tunesmith.report.compare import load_comparison, markdown
    result = load_comparison(run_dir.comparison)
    return markdown(result) if result else ""


def build_card(run_dir: RunDir) -> str:
    run = read_run(run_dir)
    recipe, data = run.recipe, run.data
    base_model, base_license = base_model_and_license(recipe.model.name)
    license_id, license_name = card_license(run)
    data_files = data_file_rows(run)
    warnings = run.evaluation.warnings if run.evaluation else []
    reviewed = summarise(run)
    return render(
        "model_card.md.j2", front_matter=_front_matter(run, base_model, data_files),
        name=recipe.name, description=recipe.description.strip(), base_model=base_model,
        method=recipe.train.method, train_rows=data.splits.get("train", "?") if data else "?",
        run_dir=run.shown_dir, intended_use=recipe.description or
        "The task of the training data (see the recipe's description).",
        data_files=data_files, data_checks=_data_checks(data) if data else "not recorded.",
        splits=data.splits if data else {}, training=_training(run),
        tune=run.tune.card_text if run.tune else None,
        metric=run.evaluation.metric if run.evaluation else recipe.eval.metric,
        limitations=LIMITATIONS + [f"Warning from evaluation: {w}" for w in warnings],
        license=license_name or license_id, base_license=base_license, inherits=inherited_lines(run),
        lineage=lineage(recipe, run, license_name or license_id),
        data_bias=data_bias_text(data.bias if data else None),
        guards=guards_text(recipe), human_review=summary_text(reviewed),
        judge=judge_lines(run.evaluation.judge if run.evaluation else None, (reviewed or {}).get("judge")),
        comparison=comparison_text(run_dir), rewards=_rewards(run), **_evaluation_texts(run.evaluation))


def _rewards(run: RunRecord) -> dict[str, Any] | None:
    """A GRPO run's rewards (report/rewards.py): the table's rows and a line on the rest."""
    from tunesmith.report.rewards import reward_log, reward_rows, reward_text

    log = reward_log(run.run_dir, run.recipe)
    return {"rows": reward_rows(log), "text": reward_text(log, run.recipe)} if log else None
