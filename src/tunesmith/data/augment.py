"""Opt-in augmentation of the training split: extra rows that vary the prompt, never the answer.

Methods (`data.augment.methods`):
    random_deletion   drop each word of the last user turn with probability p (EDA)
    random_swap       swap n random pairs of words in the last user turn (EDA)
    template          rewrite the last user turn with a recipe template, e.g. "Ticket: {text}"
Every augmented row carries `meta.augmented_from` (the source file:line) and is only ever added
to the training split, after the split is made, so it can never reach an evaluation set.
"""

from __future__ import annotations

import random
from typing import Any

from tunesmith.artifacts import Augment


def _last_user_index(messages: list[dict]) -> int | None:
    indices = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return indices[-1] if indices else None


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def random_swap(words: list[str], swaps: int, rng: random.Random) -> list[str]:
    out = list(words)
    for _ in range(swaps if len(out) > 1 else 0):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def _vary(text: str, method: str, cfg: Any, rng: random.Random) -> str:
    words = text.split()
    if method == "random_deletion":
        return " ".join(random_deletion(words, cfg.deletion_p, rng))
    if method == "random_swap":
        return " ".join(random_swap(words, cfg.swaps, rng))
    return rng.choice(cfg.templates).format(text=text)


def augment(records: list[dict[str, Any]], cfg: Any, seed: int) -> list[dict[str, Any]]:
    """New rows: `cfg.copies` variants per record and method (the originals not included)."""
    rng = random.Random(seed)
    extra = []
    for record in records:
        source = f"{record['meta'].get('source')}:{record['meta'].get('line')}"
        for method in cfg.methods:
            for _ in range(cfg.copies):
                if "messages" in record:
                    index = _last_user_index(record["messages"])
                    if index is None:
                        continue
                    messages = [dict(m) for m in record["messages"]]
                    messages[index]["content"] = _vary(messages[index]["content"], method, cfg, rng)
                    new = {**record, "messages": messages}
                else:
                    new = {**record, "text": _vary(record["text"], method, cfg, rng)}
                new["meta"] = {**record["meta"], "augmented_from": source, "augmentation": method}
                extra.append(new)
    return extra


def run(train: list[dict[str, Any]], recipe: Any) -> tuple[list[dict[str, Any]], Augment | None]:
    """The data stage's augmentation step (opt-in): train with the new rows after it."""
    cfg = recipe.data.augment
    if not cfg.methods:
        return train, None
    extra = augment(train, cfg, recipe.data.seed)
    return train + extra, Augment(methods=list(cfg.methods), rows_added=len(extra))
