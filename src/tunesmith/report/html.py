"""The run report: `runs/<run>/report.html`, one self-contained page (figures inline, no network)
with the key numbers, loss curves, metric bars with CIs (base vs fine-tuned), confusion
matrix, per-group bias chart, and the data summary. Built from the run directory alone, with
the `run_report.html.j2` template."""

from __future__ import annotations

import base64
from typing import Any

from tunesmith.artifacts import Bias, Confusion, Generalisation, SetResult
from tunesmith.formatting import delta, gap_text, number, pct
from tunesmith.render import figure_png, render
from tunesmith.report.card import benchmark_rows, data_bias_text, forgetting_text, judge_lines
from tunesmith.report.lineage import data_file_rows, inherited_lines
from tunesmith.report.review import summarise, summary_text
from tunesmith.report.sources import RunRecord, read_run
from tunesmith.rundir import RunDir

SHOWN_METRICS = ("token_f1", "rouge_l", "bleu", "chrf", "json_valid")


def _loss_figure(curves: Generalisation) -> str:
    def draw(axis):
        if curves.train:
            axis.plot(*zip(*curves.train, strict=True), label="train loss")
        if curves.val:
            axis.plot(*zip(*curves.val, strict=True), "o-", label="validation loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend()
    return figure_png(draw)


def _metric_bars(sets: dict[str, SetResult]) -> str:
    names = list(sets)

    def draw(axis):
        width = 0.38
        for offset, model in ((-width / 2, "base"), (width / 2, "finetuned")):
            scores = [getattr(sets[n], model) for n in names]
            values = [(s.value if s else None) or 0.0 for s in scores]
            cis = [(s.ci if s and s.ci else (v, v)) for s, v in zip(scores, values, strict=True)]
            errors = [[v - c[0] for v, c in zip(values, cis, strict=True)],
                      [c[1] - v for v, c in zip(values, cis, strict=True)]]
            axis.bar([i + offset for i in range(len(names))], values, width, yerr=errors, capsize=4,
                     label="fine-tuned" if model == "finetuned" else "base")
        axis.set_xticks(range(len(names)), names)
        axis.set_ylim(0, 1.05)
        axis.legend()
    return figure_png(draw)


def _confusion_figure(confusion: Confusion) -> str:
    labels, matrix = confusion.labels, confusion.matrix

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


def _bias_figure(bias: Bias) -> str:
    def draw(axis):
        labels, values = [], []
        for dimension, result in bias.dimensions.items():
            for group, value in result.per_group.items():
                labels.append(f"{dimension}: {group}")
                values.append(value)
        axis.barh(labels, values)
        axis.invert_yaxis()
        axis.set_xlim(0, 1.05)
        axis.tick_params(axis="y", labelsize=7)
    return figure_png(draw)


def _figures(run: RunRecord) -> dict[str, Any]:
    evaluation, sets = run.evaluation, run.evaluation.sets if run.evaluation else {}
    curves = evaluation.generalisation if evaluation else None
    tune_pngs = [(f, run.run_dir.tune / f) for f in (run.tune.figures if run.tune else [])]
    return {
        "metrics": _metric_bars(sets) if sets else None,
        "loss": _loss_figure(curves) if curves and curves.train else None,
        "confusion": {n: _confusion_figure(r.finetuned.labels.confusion)
                      for n, r in sets.items() if r.finetuned.labels},
        "bias": _bias_figure(evaluation.bias) if evaluation and evaluation.bias and any(
            r.per_group for r in evaluation.bias.dimensions.values()) else None,
        "tune": [(f, base64.b64encode(p.read_bytes()).decode()) for f, p in tune_pngs if p.exists()],
        "curve": _curve_figure(run.curve) if run.curve else None,
        "rewards": _rewards(run),
    }


def _rewards(run: RunRecord) -> dict[str, Any] | None:
    """A GRPO run's rewards per step (figure), the table and a line on the rest."""
    from tunesmith.report.rewards import reward_figure, reward_log, reward_rows, reward_text

    log = reward_log(run.run_dir, run.recipe)
    if log is None:
        return None
    return {"png": reward_figure(log), "rows": reward_rows(log), "text": reward_text(log, run.recipe)}


def _curve_figure(curve: Any) -> str:
    """`tunesmith curve`: each point with its CI, the fitted law, and the 2x / 10x forecasts."""
    import numpy as np

    from tunesmith.evaluate.curve import law

    def draw(axis: Any) -> None:
        full = max(p.train_examples for p in curve.points)
        axis.errorbar([p.train_examples for p in curve.points], [100 * p.value for p in curve.points],
                      yerr=[[100 * (p.value - p.ci_low) for p in curve.points],
                            [100 * (p.ci_high - p.value) for p in curve.points]], fmt="o", capsize=3,
                      label="measured (95% CI)")
        if curve.fit is not None:
            sizes = np.geomspace(min(p.train_examples for p in curve.points), 10 * full, 100)
            fit = curve.fit
            axis.plot(sizes, 100 * law(sizes / full, fit.ceiling, fit.scale, fit.exponent), "--",
                      label="saturating power law")
            ahead = curve.forecasts
            axis.errorbar([f.train_examples for f in ahead], [100 * f.value for f in ahead],
                          yerr=[[100 * (f.value - f.ci_low) for f in ahead],
                                [100 * (f.ci_high - f.value) for f in ahead]],
                          fmt="s", capsize=3, label="forecast 2x, 10x (95%)")
        axis.set_xscale("log")
        axis.set_xlabel("training examples")
        axis.set_ylabel(f"{curve.metric} (%)")
        axis.legend(fontsize=8)

    return figure_png(draw, (7, 3.5))


def _tables(run: RunRecord) -> dict[str, Any]:
    sets = run.evaluation.sets if run.evaluation else {}
    bias = run.evaluation.bias if run.evaluation else None
    reviewed = summarise(run)
    return {
        "key_rows": [[n, r.examples, pct(r.base.value, r.base.ci) if r.base else "-",
                      pct(r.finetuned.value, r.finetuned.ci), delta(r.paired)] for n, r in sets.items()],
        "all_metrics": [[n] + [number(r.finetuned.metrics[m].value, 3) if m in r.finetuned.metrics else "-"
                               for m in SHOWN_METRICS] for n, r in sets.items()],
        "worst": {n: [[w.index, w.prompt[:200], w.reference, w.finetuned_prediction, w.finetuned_error]
                      for w in r.worst_examples] for n, r in sets.items()},
        "guard_rows": [[g.guard, g.step, g.message] for g in (run.train.guards if run.train else [])],
        "bias_rows": [[d, r.prompts, gap_text(r), f"{100 * r.changed_share:.0f}%",
                       "yes" if r.exceeds_max_gap else "no"]
                      for d, r in (bias.dimensions.items() if bias else [])],
        "data_files": [[f["path"], f["role"] or "-", f["format"], f["valid_rows"], f["rows_kept"],
                        f["license"], f["source"]] for f in data_file_rows(run)],
        "inherits": inherited_lines(run) if run.data else [],
        "data_bias": data_bias_text(run.data.bias) if run.data and run.data.bias else "",
        "human_review": summary_text(reviewed),
        "judge": judge_lines(run.evaluation.judge if run.evaluation else None, (reviewed or {}).get("judge")),
        "comparison": _comparison(run.run_dir),
        **_benchmark_tables(run.evaluation),
        "curve_verdict": run.curve.verdict if run.curve else "",
    }


def _benchmark_tables(evaluation: Any) -> dict[str, Any]:
    if evaluation is None:
        return {"benchmarks": [], "harness": "", "forgetting": ""}
    rows = [[r["task"], r["metric"], r["examples"], r["shots"], r["base"], r["finetuned"], r["delta"]]
            for r in benchmark_rows(evaluation)]
    return {"benchmarks": rows, "harness": evaluation.benchmarks.harness if evaluation.benchmarks else "",
            "forgetting": forgetting_text(evaluation.forgetting)}


def _comparison(run_dir: Any) -> dict[str, Any] | None:
    """The tables of `tunesmith report RUN --against OTHER` (comparison.json), if the run has one."""
    from tunesmith.report import compare
    result = compare.load_comparison(run_dir.comparison)
    if result is None:
        return None
    return {"against": result.runs[0], "metric": result.metric, "score_rows": compare.score_rows(result),
            "bias_rows": compare.bias_rows(result),
            "recipe_rows": [[k, *[str(v) for v in vs]] for k, vs in result.recipe_diff.items()],
            "runs": result.runs}


def build_report(run_dir: RunDir) -> str:
    run = read_run(run_dir)
    return render("run_report.html.j2", recipe=run.recipe, evaluation=run.evaluation, train=run.train,
                  tune=run.tune, data=run.data, figures=_figures(run), **_tables(run))
