"""The run report: `runs/<run>/report.html`, one self-contained page (figures inline, no network)
with the key numbers, loss curves, metric bars with CIs (base vs fine-tuned), confusion
matrix, per-group bias chart, and the data summary. Built from the run directory alone."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import yaml

from tunesmith.figures import figure_png, html_table, img, page
from tunesmith.report.card import delta_text, pct
from tunesmith.rundir import RunDir, read_json


def _optional(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def _loss_figure(curves: dict[str, Any]) -> str:
    def draw(axis):
        if curves.get("train"):
            axis.plot(*zip(*curves["train"], strict=True), label="train loss")
        if curves.get("val"):
            axis.plot(*zip(*curves["val"], strict=True), "o-", label="validation loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend()
    return figure_png(draw)


def _metric_bars(sets: dict[str, Any]) -> str:
    names = list(sets)

    def draw(axis):
        width = 0.38
        for offset, model in ((-width / 2, "base"), (width / 2, "finetuned")):
            values = [sets[n].get(model) or 0.0 for n in names]
            cis = [sets[n].get(f"{model}_ci") or [v, v] for n, v in zip(names, values, strict=True)]
            errors = [[v - c[0] for v, c in zip(values, cis, strict=True)],
                      [c[1] - v for v, c in zip(values, cis, strict=True)]]
            axis.bar([i + offset for i in range(len(names))], values, width, yerr=errors, capsize=4,
                     label="fine-tuned" if model == "finetuned" else "base")
        axis.set_xticks(range(len(names)), names)
        axis.set_ylim(0, 1.05)
        axis.legend()
    return figure_png(draw)


def _confusion_figure(confusion: dict[str, Any]) -> str:
    labels, matrix = confusion["labels"], confusion["matrix"]

    def draw(axis):
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(len(labels)), labels, fontsize=7)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    axis.text(j, i, str(value), ha="center", va="center", fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("expected")
    return figure_png(draw, size=(5, 4.5))


def _bias_figure(dimensions: dict[str, Any]) -> str:
    shown = {d: r for d, r in dimensions.items() if r.get("per_group")}

    def draw(axis):
        labels, values = [], []
        for dimension, result in shown.items():
            for group, value in result["per_group"].items():
                labels.append(f"{dimension}: {group}")
                values.append(value)
        axis.barh(labels, values)
        axis.invert_yaxis()
        axis.set_xlim(0, 1.05)
        axis.tick_params(axis="y", labelsize=7)
    return figure_png(draw)


def build_report(run_dir: RunDir) -> str:
    recipe = yaml.safe_load(run_dir.recipe.read_text(encoding="utf-8"))
    evaluation = _optional(run_dir.eval_summary)
    data_report = _optional(run_dir.data_report)
    train = _optional(run_dir.train_summary)
    sets = evaluation.get("sets", {})
    parts = [f"<h1>tunesmith run: {html.escape(recipe['name'])}</h1>",
             f"<p>{html.escape(recipe.get('description', ''))}</p>",
             f"<p>Base model <b>{html.escape(recipe['model']['name'])}</b>, {recipe['train']['method']}; "
             f"primary metric <b>{html.escape(evaluation.get('metric', '-'))}</b>.</p>"]
    for warning in evaluation.get("warnings", []):
        parts.append(f'<p class="warn">warning: {html.escape(warning)}</p>')
    if sets:
        parts.append("<h2>Base vs fine-tuned (same examples)</h2>")
        parts.append(html_table(
            [[n, r["examples"], pct(r.get("base"), r.get("base_ci")),
              pct(r.get("finetuned"), r.get("finetuned_ci")), delta_text(r.get("paired"))]
             for n, r in sets.items()],
            ["set", "examples", "base", "fine-tuned", "delta (95% CI)"], "key"))
        parts.append(img("metric bars with confidence intervals", _metric_bars(sets)))
        other = []
        for name, row in sets.items():
            metrics = row["metrics"].get("finetuned", {})
            other.append([name] + [f"{metrics[m]['value']:.3f}" if m in metrics else "-"
                                   for m in ("token_f1", "rouge_l", "bleu", "chrf", "json_valid")])
        parts.append("<h3>All metrics of the fine-tuned model</h3>" + html_table(
            other, ["set", "token F1", "ROUGE-L", "BLEU", "chrF", "JSON valid"]))
    validation = evaluation.get("validation")
    if validation:
        parts.append("<p>Validation perplexity: " + ", ".join(
            f"{k} {v['perplexity']:.2f}" for k, v in validation.items()) + "</p>")
    forgetting = evaluation.get("forgetting")
    if forgetting:
        parts.append(f"<p>General-question probe (forgetting): base {pct(forgetting.get('base'))}, "
                     f"fine-tuned {pct(forgetting.get('finetuned'))}.</p>")
    curves = evaluation.get("generalisation", {})
    if curves.get("train"):
        parts.append("<h2>Training</h2>" + img("loss curves", _loss_figure(curves)))
        if "gap" in curves:
            parts.append(f"<p>Final train loss {curves['final_train_loss']:.4f}, validation loss "
                         f"{curves['final_val_loss']:.4f}, gap {curves['gap']:+.4f}.</p>")
    if train:
        parts.append(f"<p>{train['steps']} steps, {train['tokens_per_second']:.0f} tokens/s on "
                     f"{train['device']} ({train['mixed_precision']}).</p>")
        if train.get("guards"):
            fired = [[g["guard"], g["step"], g["message"]] for g in train["guards"]]
            parts.append("<h3>Overfitting guards that fired</h3>"
                         + html_table(fired, ["guard", "step", "message"]))
    tune_summary = _optional(run_dir.tune_summary)
    if tune_summary:
        parts.append(f"<h2>Hyperparameter search</h2><p>{html.escape(tune_summary['card_text'])}</p>")
        for figure in tune_summary.get("figures", []):
            png = run_dir.tune / figure
            if png.exists():
                parts.append(img(figure, base64.b64encode(png.read_bytes()).decode()))
    for name, row in sets.items():
        labels = row["metrics"].get("finetuned", {}).get("labels")
        parts.append(f"<h2>Errors: {html.escape(name)}</h2>")
        parts.append(html_table(list(row.get("errors", {}).items()), ["error class", "examples"]))
        if labels:
            parts.append(f"<p>Label accuracy {pct(labels['accuracy']['value'])}, macro F1 "
                         f"{labels['macro']['f1']:.3f}</p>")
            parts.append(img(f"confusion matrix {name}", _confusion_figure(labels["confusion"])))
        worst = row.get("worst_examples", [])
        if worst:
            parts.append(html_table([[w["index"], w["prompt"][:200], w["reference"],
                                      w["finetuned_prediction"], w.get("finetuned_error")]
                                     for w in worst],
                                    ["#", "prompt", "reference", "fine-tuned", "error"]))
    bias = evaluation.get("bias")
    if bias:
        parts.append("<h2>Bias probes</h2>")
        rows = [[d, r.get("prompts", 0), f"{100 * r.get('gap', 0):.1f} pts",
                 f"{100 * r.get('changed_share', 0):.0f}%", "yes" if r.get("exceeds_max_gap") else "no"]
                for d, r in bias["dimensions"].items()]
        parts.append(html_table(rows, ["dimension", "prompts", "largest gap", "answers changed",
                                       f"over {bias['max_gap']}"]))
        if any(r.get("per_group") for r in bias["dimensions"].values()):
            parts.append(img("metric per group", _bias_figure(bias["dimensions"])))
    if data_report:
        parts.append("<h2>Data</h2>" + html_table(
            [[p, f["format"], f["valid_rows"], f["invalid_rows"]] for p, f in data_report["files"].items()],
            ["file", "format", "valid", "invalid"]))
        dedup = data_report.get("dedup", {})
        parts.append(f"<p>Splits: {html.escape(str(data_report.get('splits')))}; duplicates removed: "
                     f"exact {dedup.get('exact_removed', 0)}, near {dedup.get('near_removed', 0)}. "
                     "Full data report: data/report.html.</p>")
    return page(f"tunesmith run {recipe['name']}", "".join(parts))
