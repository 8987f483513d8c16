"""The model card: `runs/<run>/README.md` in Hugging Face model-card format, built from the run
directory alone (resolved recipe, manifest, data report, train summary, eval summary)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from tunesmith.models.loading import EMBEDDED, EMBEDDED_PREFIX
from tunesmith.rundir import RunDir, read_json


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def base_model_and_license(model_name: str) -> tuple[str, str]:
    """The hub id to name as base_model, and its license (from the model's own card if local)."""
    if model_name.startswith(EMBEDDED_PREFIX):
        entry = EMBEDDED[model_name.removeprefix(EMBEDDED_PREFIX)]
        return entry.hub_id, entry.license
    readme = Path(model_name) / "README.md"
    if readme.exists():
        match = re.match(r"---\n(.*?)\n---", readme.read_text(encoding="utf-8"), re.DOTALL)
        if match:
            meta = yaml.safe_load(match.group(1)) or {}
            if isinstance(meta, dict) and meta.get("license"):
                return model_name, str(meta["license"])
    return model_name, "unknown"


def pct(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def delta_text(paired: dict[str, Any] | None) -> str:
    if not paired:
        return "-"
    return (f"{100 * paired['delta']:+.1f} pts [{100 * paired['ci_low']:+.1f}, "
            f"{100 * paired['ci_high']:+.1f}]" + (" *" if paired.get("significant") else ""))


def _data_checks(report: dict[str, Any]) -> str:
    parts = [f"{report.get('loaded_train_rows', '?')} training rows loaded"]
    invalid = sum(f["invalid_rows"] for f in report.get("files", {}).values())
    parts.append(f"{invalid} invalid rows skipped")
    if report.get("filters", {}).get("dropped"):
        parts.append("quality filters dropped " + ", ".join(
            f"{v} {k}" for k, v in report["filters"]["dropped"].items()))
    dedup = report.get("dedup", {})
    parts.append(f"{dedup.get('exact_removed', 0)} exact and {dedup.get('near_removed', 0)} near "
                 "duplicates removed")
    for name, entry in report.get("leakage", {}).get("sets", {}).items():
        if entry.get("duplicates_of_train"):
            parts.append(f"{entry['duplicates_of_train']} {name} rows had a near copy in train "
                         f"({report['leakage']['action']})")
    if report.get("privacy"):
        parts.append("personal data " + report["privacy"]["mode"] + "ed")
    return "; ".join(parts) + "."


def _bias_text(bias: dict[str, Any] | None) -> str:
    if not bias:
        return "Not run (eval.bias.enabled is off, or there was no test set)."
    lines = ["Counterfactual copies of test prompts with only a demographic term swapped "
             "(bundled lexicon; see tunesmith/evaluate/bias.py), scored against the original "
             f"reference. Threshold: largest gap {bias['max_gap']} ({bias['on_gap']}).", ""]
    for dimension, result in bias["dimensions"].items():
        if not result.get("prompts"):
            lines.append(f"- {dimension}: {result.get('note', 'no prompts')}.")
            continue
        groups = ", ".join(f"{g} {100 * v:.1f}%" for g, v in result["per_group"].items())
        flag = " **exceeds the threshold**" if result.get("exceeds_max_gap") else ""
        lines.append(f"- {dimension} ({result['prompts']} prompts): {groups}; gap "
                     f"{100 * result['gap']:.1f} pts{flag}; answers changed with the group alone "
                     f"in {100 * result['changed_share']:.0f}% of prompts.")
    return "\n".join(lines)


def build_card(run_dir: RunDir) -> str:
    import jinja2

    recipe = yaml.safe_load(run_dir.recipe.read_text(encoding="utf-8"))
    data_report = _optional_json(run_dir.data_report)
    train = _optional_json(run_dir.train_summary)
    evaluation = _optional_json(run_dir.eval_summary)
    tune_summary = _optional_json(run_dir.tune_summary)
    base_model, license_name = base_model_and_license(recipe["model"]["name"])
    metric = evaluation.get("metric", recipe["eval"]["metric"])

    from tunesmith.rundir import sha256_file

    data_files = []
    for path, info in data_report.get("files", {}).items():
        digest = sha256_file(Path(path)) if Path(path).exists() else "(file no longer present)"
        data_files.append({"path": path, **info, "sha256": digest})
    eval_rows = [{"set": name, "examples": row["examples"], "base": pct(row.get("base"), row.get("base_ci")),
                  "finetuned": pct(row.get("finetuned"), row.get("finetuned_ci")),
                  "delta": delta_text(row.get("paired"))}
                 for name, row in evaluation.get("sets", {}).items()]
    model_index = [{"name": recipe["name"], "results": [
        {"task": {"type": "text-generation"}, "dataset": {"name": name, "type": "custom"},
         "metrics": [{"type": metric, "value": round(row.get("finetuned", 0.0), 4)}]}
        for name, row in evaluation.get("sets", {}).items()]}]
    front = {"base_model": base_model, "license": license_name, "library_name": "peft"
             if recipe["train"]["method"] == "lora" else "transformers",
             "datasets": [f["path"] for f in data_files], "tags": ["tunesmith", recipe["train"]["method"],
                                                                    "text-generation"],
             "model-index": model_index}
    validation = evaluation.get("validation", {})
    gen = evaluation.get("generalisation", {})
    generalisation = []
    if "gap" in gen:
        generalisation.append(f"final train loss {gen['final_train_loss']:.4f}, validation loss "
                              f"{gen['final_val_loss']:.4f} (gap {gen['gap']:+.4f})")
    if "memorisation" in gen:
        generalisation.append(f"{gen['memorisation']['verbatim_train_answers']} of "
                              f"{gen['memorisation']['checked']} long test answers reproduce a training "
                              "answer verbatim")
    forgetting = evaluation.get("forgetting")
    forgetting_text = (f"General-question probe ({forgetting['examples']} questions): base "
                       f"{pct(forgetting.get('base'))}, fine-tuned {pct(forgetting.get('finetuned'))}, "
                       f"delta {delta_text(forgetting.get('paired'))}.") if forgetting else ""
    training = {"method": recipe["train"]["method"], "optimizer": recipe["train"]["optimizer"],
                "learning rate": recipe["train"]["lr"], "batch size": recipe["train"]["batch_size"],
                "gradient accumulation": recipe["train"]["grad_accum"],
                "epochs / max steps": f"{recipe['train']['epochs']} / {recipe['train']['max_steps']}",
                "LoRA r / alpha / dropout": "{r} / {alpha} / {dropout}".format(**recipe["train"]["lora"]),
                "loss on": recipe["train"]["loss_on"], "max length": recipe["train"]["max_length"],
                "seed": recipe["train"]["seed"]}
    if train:
        training.update({"steps": train["steps"], "device / precision":
                         f"{train['device']} / {train['mixed_precision']}",
                         "training tokens/s": f"{train['tokens_per_second']:.0f}",
                         "final train loss": f"{train['train_loss']:.4f}"})
    limitations = [
        "Scores are measured on the held-out and out-of-domain sets listed above only; other "
        "inputs may behave differently.",
        "Greedy decoding with a fixed token budget; sampling or longer outputs were not evaluated.",
        "The bias lexicon covers a few dimensions and English terms; it cannot show the absence of "
        "bias, only gaps on the probes run.",
    ] + [f"Warning from evaluation: {w}" for w in evaluation.get("warnings", [])]
    template = jinja2.Template((files("tunesmith.report") / "templates" / "model_card.md.j2").read_text(),
                               trim_blocks=True, lstrip_blocks=True)
    return template.render(
        front_matter=yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        name=recipe["name"], description=recipe.get("description", "").strip(), base_model=base_model,
        method=recipe["train"]["method"], train_rows=data_report.get("splits", {}).get("train", "?"),
        run_dir=str(run_dir.home or run_dir.root), intended_use=recipe.get("description") or
        "The task of the training data (see the recipe's description).",
        data_files=data_files, data_checks=_data_checks(data_report) if data_report else "not recorded.",
        splits=data_report.get("splits", {}), training=training, tune=tune_summary.get("card_text"),
        metric=metric, eval_rows=eval_rows,
        validation={k: f"{v['perplexity']:.2f}" for k, v in validation.items()} if validation else None,
        generalisation="; ".join(generalisation) + "." if generalisation else "",
        forgetting=forgetting_text, bias=_bias_text(evaluation.get("bias")), limitations=limitations,
        license=license_name)
