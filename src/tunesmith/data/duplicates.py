"""The data stage's duplicate step on the training rows: exact duplicates (normalised hashing) and
near duplicates (MinHash LSH, verified; the algorithms are in dedup.py) removed, the first of each
cluster kept; templated answers (the same or nearly the same answer across many rows) reported,
not removed."""

from __future__ import annotations

from typing import Any

from tunesmith.artifacts import Dedup
from tunesmith.data.dedup import exact_duplicate_groups, near_duplicate_clusters
from tunesmith.data.filters import answers
from tunesmith.data.rows import match_text, near_params, where
from tunesmith.recipe import Recipe

MAX_LISTED = 50


def run(records: list[dict[str, Any]], recipe: Recipe) -> tuple[list[dict[str, Any]], Dedup]:
    cfg = recipe.data.dedup
    texts = [match_text(r) for r in records]
    removed: set[int] = set()
    section = Dedup()
    clusters: list[dict[str, Any]] = []
    if cfg.exact:
        for group in exact_duplicate_groups(texts):
            removed.update(group[1:])
            section.exact_removed += len(group) - 1
            clusters.append(_cluster_entry("exact", group, records, texts))
    if cfg.near:
        for cluster in near_duplicate_clusters(texts, near_params(recipe)):
            extra = [i for i in cluster[1:] if i not in removed]
            if cluster[0] in removed or not extra:
                continue
            removed.update(extra)
            section.near_removed += len(extra)
            clusters.append(_cluster_entry("near", cluster, records, texts))
    section.clusters = sorted(clusters, key=lambda c: -c["size"])[:MAX_LISTED]
    section.answer_clusters = _answer_clusters(records, recipe)
    return [r for i, r in enumerate(records) if i not in removed], section


def _cluster_entry(kind: str, members: list[int], records: list[dict], texts: list[str]) -> dict:
    return {"kind": kind, "size": len(members), "kept": where(records[members[0]]),
            "example": texts[members[0]][:200], "members": [where(records[i]) for i in members[:10]]}


def _answer_clusters(records: list[dict], recipe: Recipe) -> list[dict]:
    """Templated answers: the same (or nearly the same) assistant text across many rows.
    Reported, not removed: repeated answers to different prompts can be legitimate."""
    flat = [(i, a) for i, r in enumerate(records) for a in answers(r)]
    if not flat:
        return []
    texts = [a for _, a in flat]
    clusters = [("exact", g) for g in exact_duplicate_groups(texts)]
    in_exact = {i for _, g in clusters for i in g}
    clusters += [("near", c) for c in near_duplicate_clusters(texts, near_params(recipe))
                 if not set(c) <= in_exact]
    out = [{"kind": kind, "size": len(members), "example": texts[members[0]][:200],
            "rows": len({flat[m][0] for m in members})} for kind, members in clusters]
    return sorted(out, key=lambda c: -c["size"])[:MAX_LISTED]
