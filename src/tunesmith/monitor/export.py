"""The loop back: what users said of a served model's answers becomes the next run's data.

    tunesmith feedback export runs/demo --out feedback/

writes, from the request log's rated answers:
- `sft.jsonl`: each corrected answer as a chat demonstration (the conversation, then the
  correction as the assistant's turn), and each answer rated +1 as it was given (`meta.kind`:
  `correction` or `approved`; `--corrections-only` leaves the approved out). Corrections alone
  are the answers the model got wrong, so their labels are skewed towards its errors: in the
  loop demo 30% of them were `feature_request` against 12% of the held-out thermostat tickets,
  and retraining on them pulled the model's label prior there. The approved answers restore the
  traffic's own mix.
- `kto.jsonl`: each rated answer with label true (+1) or false (-1), and each correction as a
  desirable answer (KTO: prompt, completion, label);
- `dpo.jsonl`: pairs that share a prompt: a correction (chosen) against the answer it
  corrected (rejected), and a +1 answer against a -1 answer to the same conversation;
- `export.json`: how many rows of each, and how many were dropped and why;
- `README.md`: a dataset card (Hub front matter) with the license the served model is under
  (its base model's and training data's terms, as its own card states them) and the users'
  consent (`monitor.consent`), so that a run that trains on these files inherits both
  (data/licenses.py reads the card). With `monitor.consent: none` nothing is exported.

Every file goes through the data stage's duplicate removal (exact and near) and its leakage
check against the run's test set, so feedback on a test prompt never trains the next run.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.artifacts import DataReport, load_optional
from tunesmith.data import match_text, near_params
from tunesmith.data.dedup import exact_duplicate_groups, near_duplicate_clusters, normalise_for_match
from tunesmith.data.leakage import cross_duplicates
from tunesmith.data.licenses import model_license
from tunesmith.errors import ConfigError
from tunesmith.files import read_jsonl, write_json, write_jsonl, write_text
from tunesmith.licenses import card_text
from tunesmith.models.license import license_terms
from tunesmith.monitor.store import Store
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir


@dataclass
class ExportResult:
    out: Path
    rows: dict[str, int]
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    rated: int = 0


def _conversation(row: dict[str, Any]) -> list[dict[str, str]] | None:
    """The rated request's conversation without system turns (the next run adds its own)."""
    try:
        prompt = json.loads(row["prompt"]) if row["prompt"] else None
    except json.JSONDecodeError:
        return None
    if isinstance(prompt, str):  # a completion prompt
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        return None
    turns = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
              "".join(p.get("text") or "" for p in m["content"] or [])}
             for m in prompt if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    return turns if turns and turns[-1]["role"] == "user" else None


def feedback_rows(rated: list[dict[str, Any]], approved: bool = True) -> dict[str, list[dict[str, Any]]]:
    """SFT, KTO and DPO rows from feedback joined with its requests (see the module's doc)."""
    sft, kto, dpo, confirmed = [], [], [], []
    by_prompt: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"good": [], "bad": []})
    for row in rated:
        prompt = _conversation(row)
        if prompt is None or row["response"] is None:
            continue  # prompts were not stored (monitor.store_prompts: false)
        meta = {"source": "feedback", "request_id": row["request_id"], "rating": row["rating"]}
        good = row["rating"] > 0
        kto.append({"prompt": prompt, "completion": row["response"], "label": good, "meta": meta})
        by_prompt[json.dumps(prompt)]["good" if good else "bad"].append(row["response"])
        correction = (row.get("correction") or "").strip()
        if good and approved:
            confirmed.append({"messages": [*prompt, {"role": "assistant", "content": row["response"]}],
                              "meta": {**meta, "kind": "approved"}})
        if correction:
            sft.append({"messages": [*prompt, {"role": "assistant", "content": correction}],
                        "meta": {**meta, "kind": "correction"}})
            kto.append({"prompt": prompt, "completion": correction, "label": True, "meta": meta})
            if correction != row["response"].strip():
                dpo.append({"prompt": prompt, "chosen": correction, "rejected": row["response"],
                            "meta": meta})
    for key, answers in by_prompt.items():
        for good in answers["good"]:
            for bad in answers["bad"]:
                dpo.append({"prompt": json.loads(key), "chosen": good, "rejected": bad,
                            "meta": {"source": "feedback", "pair": "rated +1 vs -1"}})
    corrected = {json.dumps(r["messages"][:-1]) for r in sft}  # a correction outranks an approval
    sft += [r for r in confirmed if json.dumps(r["messages"][:-1]) not in corrected]
    return {"sft": sft, "kto": kto, "dpo": dpo}


def _text(record: dict[str, Any]) -> str:
    """What dedup and leakage compare: the data stage's text of a record."""
    return match_text(record)


def _prompt_text(record: dict[str, Any]) -> str:
    turns = record.get("messages", record.get("prompt", []))
    return "\n".join(m["content"] for m in turns if m["role"] == "user")


def _leaked(prompts: list[str], test_prompts: list[str], recipe: Recipe) -> set[int]:
    """Indices of prompts that are a test prompt: the same after normalising, or a near copy."""
    if not test_prompts:
        return set()
    tests = {normalise_for_match(t) for t in test_prompts}
    exact = {i for i, p in enumerate(prompts) if normalise_for_match(p) in tests}
    return exact | {i for i, _, _ in cross_duplicates(prompts, test_prompts, near_params(recipe))}


def clean(rows: list[dict[str, Any]], test_prompts: list[str], recipe: Recipe) -> tuple[list[dict], dict]:
    """Exact and near duplicates removed (first kept); rows whose prompt is a test prompt dropped."""
    texts = [_text(r) for r in rows]
    drop = {i for group in exact_duplicate_groups(texts) for i in group[1:]}
    if recipe.data.dedup.near:
        kept = [i for i in range(len(rows)) if i not in drop]
        clusters = near_duplicate_clusters([texts[i] for i in kept], near_params(recipe))
        near = {kept[i] for cluster in clusters for i in cluster[1:]}
    else:
        near = set()
    remaining = [i for i in range(len(rows)) if i not in drop | near]
    leaked = _leaked([_prompt_text(rows[i]) for i in remaining], test_prompts, recipe)
    out = [rows[i] for n, i in enumerate(remaining) if n not in leaked]
    return out, {"exact_duplicates": len(drop), "near_duplicates": len(near), "test_leakage": len(leaked)}


def check_consent(run: RunDir, recipe: Recipe) -> None:
    if recipe.monitor.consent == "none":
        raise ConfigError(f"{run.root}: monitor.consent is none: the served model's users did not agree that "
                          "their conversations train models, and feedback export writes training data. "
                          "Export nothing; if your terms of use say otherwise, set monitor.consent: training "
                          f"in {run.root / 'recipe.yaml'}.")


def _served_license(run: RunDir, recipe: Recipe) -> tuple[str, str | None]:
    """The license the served model is under: its base's, bound further by its training data."""
    report = load_optional(DataReport, run.data_report)
    return model_license(license_terms(recipe.model.name).license, report.licenses if report else None)


def dataset_card(run: RunDir, recipe: Recipe, rows: dict[str, int]) -> str:
    """README.md for the export: the Hub's front matter, and tunesmith's own (source, consent)."""
    license_id, license_name = _served_license(run, recipe)
    consent = recipe.monitor.consent
    front = {"license": license_id, **({"license_name": license_name} if license_name else {}),
             "pretty_name": f"feedback on {recipe.name}",
             "tunesmith": {"source": f"feedback from the users of {run.root}", "consent": consent,
                           "run": str(run.root), "files": [f"{n}.jsonl" for n in rows]}}
    body = (f"# Feedback on {recipe.name}\n\nRated and corrected answers of the model served from "
            f"`{run.root}` (`tunesmith feedback export`): " + ", ".join(f"{n}.jsonl {c} rows" for n, c in
                                                                       rows.items()) + ".\n\n"
            f"License: {license_name or license_id}, the served model's (its base model and training data). "
            f"Users' consent to training (monitor.consent): {consent}.\n")
    return card_text(front, body)


def export(run: RunDir, recipe: Recipe, out: Path, store_url: str | None = None,
           approved: bool = True) -> ExportResult:
    check_consent(run, recipe)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file. Give a directory for sft.jsonl, kto.jsonl and dpo.jsonl.")
    store = Store.open_existing(store_url or recipe.monitor.store or run.monitor_db,
                                f"Serve the run (`tunesmith serve {run.root}`) and send feedback to "
                                "POST /v1/feedback first, or pass --store with the store's URL.")
    try:
        rated = store.rated()
    finally:
        store.close()
    test = read_jsonl(run.split("test")) if run.split("test").is_file() else []
    test_prompts = [_prompt_text(r) for r in test]
    result = ExportResult(out, {}, rated=len(rated))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in feedback_rows(rated, approved).items():
        kept, dropped = clean(rows, test_prompts, recipe)
        write_jsonl(out / f"{name}.jsonl", kept)
        result.rows[name], result.dropped[name] = len(kept), dropped
    sft_kinds = Counter(r["meta"]["kind"] for r in read_jsonl(out / "sft.jsonl"))
    write_json(out / "export.json", {"run": str(run.root), "rated": result.rated, "rows": result.rows,
                                     "sft_rows": dict(sft_kinds), "dropped": result.dropped,
                                     "consent": recipe.monitor.consent})
    write_text(out / "README.md", dataset_card(run, recipe, result.rows))
    return result
