"""License lineage for the model card and the run report: the base model's license, each data
file's (data/report.json's `licenses`), the terms the fine-tuned model inherits from them, and the
license the card declares. The facts are data/licenses.py's and models/license.py's; this module
only words them.

    files = data_file_rows(run)             # one row per data file: rows kept, hash, license, source
    lines = inherited_lines(run)            # "non-commercial: trained on CC BY-NC 4.0 data (...)"
    license, license_name = card_license(run)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.licenses import inherited, model_license
from tunesmith.files import sha256_file
from tunesmith.models.license import license_terms
from tunesmith.report.sources import RunRecord

HUB_DATASETS = "https://huggingface.co/datasets/"
NOT_RECORDED = "not recorded"


def base_model_and_license(model_name: str) -> tuple[str, str]:
    """The hub id to name as base_model, and its license (catalog, else the model's own card)."""
    terms = license_terms(model_name)
    return terms.base_model, terms.license


def card_license(run: RunRecord) -> tuple[str, str | None]:
    """The card's `license` and, when that is `other`, its `license_name` (A AND B)."""
    _, base = base_model_and_license(run.recipe.model.name)
    return model_license(base, run.data.licenses if run.data else None)


def _sha(path: str, recorded: str | None) -> str:
    if recorded:
        return recorded
    return sha256_file(Path(path)) if Path(path).is_file() else "(file no longer present)"


def _row(path: str, info: dict[str, Any], entry: Any) -> dict[str, Any]:
    earlier = entry is not None and entry.via
    return {"path": path, **info, "role": f"train, by the adapter {entry.via}" if earlier else
            (entry.role if entry else ""),
            "rows_kept": "-" if entry is None or entry.rows_kept is None else entry.rows_kept,
            "sha256": _sha(path, entry.sha256 if entry else None),
            "license": entry.license if entry else NOT_RECORDED,
            "declared_in": entry.declared_in if entry else "",
            "source": (entry.source if entry else None) or "-",
            "attribution": (entry.attribution if entry else None) or "-"}


def data_file_rows(run: RunRecord) -> list[dict[str, Any]]:
    """Every data file: format, rows (valid; kept in its split), role, sha256, license, source,
    attribution; then the files an adapter this run continued was trained on. Runs prepared
    before data licenses say `not recorded`."""
    data = run.data
    if data is None:
        return []
    licensed = {f.path: f for f in (data.licenses.files if data.licenses else [])}
    rows = [_row(path, info.model_dump(), licensed.get(path)) for path, info in data.files.items()]
    unread = {"format": "-", "valid_rows": "-", "invalid_rows": "-"}
    return rows + [_row(path, unread, entry) for path, entry in licensed.items() if path not in data.files]


def inherited_lines(run: RunRecord) -> list[str]:
    """The terms the model inherits from its training data, or why none are listed."""
    data = run.data
    if data is None or data.licenses is None:
        return ["The training data's licenses were not recorded (the run was prepared before "
                "tunesmith recorded them): find them before you share the model."]
    lines = inherited(data.licenses)
    if lines:
        return lines
    ids = ", ".join(dict.fromkeys(f.license for f in data.licenses.files if f.role == "train"))
    return [f"none beyond the base model's license: the training data is under {ids}, which binds "
            "the model to nothing more"]


def datasets_field(rows: list[dict[str, Any]]) -> list[str]:
    """The card's `datasets`: a Hub dataset id where a file's source is one, else the file's path."""
    return list(dict.fromkeys(r["source"].removeprefix(HUB_DATASETS).strip("/")
                              if r["source"].startswith(HUB_DATASETS) else r["path"] for r in rows))


def lineage(recipe: Any, run: RunRecord, license_name: str) -> dict[str, str]:
    """The card's lineage table: the base's terms, the data's, the declared use and the check."""
    terms = license_terms(recipe.model.name)
    commercial = {"yes": "allowed", "no": "not allowed", "unknown": "unknown (read the model's own card)",
                  "conditions": f"allowed with conditions: {terms.conditions}"}[terms.commercial]
    use = recipe.model.intended_use
    if use == "commercial" and recipe.model.accept_license and terms.commercial == "no":
        declared = "commercial: accepted by model.accept_license despite the license (a separate agreement)"
    else:
        declared = {"unspecified": "not declared (model.intended_use); no check was made",
                    "research": "research", "commercial": f"commercial: {commercial}"}[use]
    derived = "a LoRA adapter on" if recipe.train.adapter == "lora" else "full weights derived from"
    found = run.data.licenses if run.data else None
    data = "; ".join(f"{f.license} (`{Path(f.path).name}`)" for f in found.files if f.role == "train") \
        if found else NOT_RECORDED
    accepted = f"; data.accept_license: {', '.join(found.accepted)} (a separate agreement)" \
        if found and found.accepted else ""
    return {"base model": terms.base_model, "base model license": terms.license,
            "commercial use": commercial, "gated": "yes" if terms.gated else "no",
            "facts from": terms.source or "nowhere: unknown", "training data licenses": data,
            "declared use": declared + accepted,
            "this model": f"{derived} {terms.base_model}, trained on the data above; under {license_name}"}
