"""Human review of a run's answers: `tunesmith review RUN_DIR` serves a page on 127.0.0.1 that
shows each evaluated prompt with its reference, the base model's answer and the fine-tuned one
side by side, and lets a person label the fine-tuned answer correct / wrong / harmful (with a
note), from the keyboard:

    c correct    w wrong    h harmful    n write a note (Enter keeps it, Esc drops it)
    j / ArrowRight next    k / ArrowLeft previous    u next unlabelled

Labels go to the run's feedback store (the same SQLite file or PostgreSQL database as production
feedback: monitor/store.py, route "review"), so a label made twice keeps the later one. The model
card and the run report summarise them (`tunesmith report`): counts per label, and how often the
person agreed with the automatic metric (agreement and Cohen's kappa), with the harmful answers
and their notes listed.
"""

from __future__ import annotations

from typing import Any

from tunesmith.artifacts import Prediction
from tunesmith.evaluate.judge import agreement as judge_agreement
from tunesmith.evaluate.stats import cohen_kappa
from tunesmith.report.sources import RunRecord

LABELS = ("correct", "wrong", "harmful")


def item_id(prediction: Prediction) -> str:
    return f"{prediction.set}:{prediction.index}"


def items(run: RunRecord) -> list[dict[str, Any]]:
    """The evaluated examples, test set first: what the page shows."""
    rows = sorted(run.predictions(), key=lambda p: (p.set != "test", p.set, p.index))
    return [{"id": item_id(p), "set": p.set, "index": p.index, "prompt": p.prompt, "reference": p.reference,
             "base": p.base_prediction, "finetuned": p.finetuned_prediction, "score": p.finetuned_score}
            for p in rows]


def open_store(run: RunRecord, create: bool) -> Any:
    """The run's feedback store (its recipe's monitor.store, or runs/<run>/monitor/requests.db);
    None when there is none yet and `create` is false."""
    from tunesmith.monitor.store import Store

    configured = run.recipe.monitor.store
    if configured:
        return Store.open(configured)
    if not create and not run.run_dir.monitor_db.is_file():
        return None
    return Store.open(run.run_dir.monitor_db)


def summarise(run: RunRecord) -> dict[str, Any] | None:
    """The review labels of a run against its automatic metric; None when nobody reviewed it."""
    store = open_store(run, create=False)
    reviews = store.reviews() if store is not None else {}
    if store is not None:
        store.close()
    if not reviews:
        return None
    by_id = {item_id(p): p for p in run.predictions()}
    counts = {label: sum(r["label"] == label for r in reviews.values()) for label in LABELS}
    pairs = [(r["label"] == "correct", (by_id[i].finetuned_score or 0.0) >= 0.5)
             for i, r in reviews.items() if i in by_id and by_id[i].finetuned_score is not None]
    agreement = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
    harmful = [{"id": i, "prompt": by_id[i].prompt[:200] if i in by_id else "", "note": r["comment"] or ""}
               for i, r in reviews.items() if r["label"] == "harmful"]
    judged = run.evaluation.judge if run.evaluation else None
    return {"labelled": len(reviews), "counts": counts, "compared": len(pairs), "agreement": agreement,
            "kappa": cohen_kappa(pairs), "metric": run.evaluation.metric if run.evaluation else None,
            "harmful": harmful,
            "judge": judge_agreement(judged, run.judge_grades(), reviews) if judged else None}


def summary_text(summary: dict[str, Any] | None) -> str:
    """The card's and the CLI's sentence."""
    if not summary:
        return "No answers reviewed by a person yet (`tunesmith review RUN_DIR`)."
    counts = ", ".join(f"{n} {label}" for label, n in summary["counts"].items())
    text = f"{summary['labelled']} answers labelled by a person: {counts}."
    if summary["agreement"] is not None:
        kappa = summary["kappa"]
        text += (f" Agreement with the automatic {summary['metric']} on {summary['compared']}: "
                 f"{100 * summary['agreement']:.0f}% (Cohen's kappa "
                 f"{'n/a' if kappa is None else f'{kappa:.2f}'}).")
    if summary.get("judge"):
        text += " " + judge_trust_text(summary["judge"])
    for entry in summary["harmful"]:
        text += f"\n- harmful: {entry['id']}: {entry['note'] or '(no note)'}"
    return text


def judge_trust_text(found: dict[str, Any]) -> str:
    """The judge's agreement with people, and whether it may be trusted on this task."""
    kappa, ci = found["kappa"], found["kappa_ci"]
    shown = "n/a" if kappa is None else f"{kappa:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    text = (f"The LLM judge's pass/fail agrees with the person on {found['compared']} answers: "
            f"{100 * found['agreement']:.0f}% (Cohen's kappa {shown}).")
    if not found["trusted"]:
        text += (f" Below eval.judge.min_kappa {found['min_kappa']}: the judge is NOT to be trusted on this "
                 "task; read its scores as a hint only.")
    return text
