"""Quality filters: each one configurable, counted, and with dropped examples kept for the report.

A filter looks at one canonical record and returns a reason to drop it, or None:
    too_short / too_long      tokens of the recipe's tokenizer outside [min_tokens, max_tokens]
    repetition               repeated lines, repeated word 3-grams, or one character repeated
    garbage                  too little of the text is letters, digits, spaces or punctuation
    copies_prompt            the answer merely repeats the prompt
    rare_label               a label seen fewer than min_label_count times (classification)

`run` is the data stage's filter step on the training rows.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

from tunesmith.artifacts import Filters
from tunesmith.data.rows import match_text, where
from tunesmith.records import as_chat, preference_texts, turn_text

EXAMPLES_PER_REASON = 3

_WORD = re.compile(r"\w+", re.UNICODE)
_RUN = re.compile(r"(.)\1{19,}", re.DOTALL)


def record_text(record: dict[str, Any]) -> str:
    """All the text of a record, one turn per line."""
    if "messages" in record:
        return "\n".join(turn_text(m) for m in record["messages"])
    if "prompt" in record:
        return "\n".join(preference_texts(record))
    return record["text"]


def answers(record: dict[str, Any]) -> list[str]:
    chat = as_chat(record)
    return [turn_text(m) for m in chat if m["role"] == "assistant"] if chat else []


def repeated_line_fraction(text: str) -> float:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 4:
        return 0.0
    return 1 - len(set(lines)) / len(lines)


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of word n-grams that are repeats of an earlier one (0 for short texts)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 10:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def text_character_fraction(text: str) -> float:
    """Share of characters that are letters, digits, marks, punctuation or whitespace."""
    if not text:
        return 1.0
    good = sum(1 for c in text if c.isspace() or unicodedata.category(c)[0] in "LNPMS")
    return good / len(text)


def copies_prompt(record: dict[str, Any], threshold: float) -> bool:
    chat = as_chat(record)
    if not chat:
        return False
    for i, message in enumerate(chat):
        if message["role"] != "assistant" or i == 0:
            continue
        prompt = chat[i - 1]["content"].strip().lower()
        answer = message["content"].strip().lower()
        if len(answer) >= 20 and difflib.SequenceMatcher(None, prompt, answer).ratio() >= threshold:
            return True
    return False


def drop_reason(record: dict[str, Any], tokens: int, cfg: Any, label_counts: Counter) -> str | None:
    """Why `record` fails the quality filters of `cfg` (a FilterConfig), or None."""
    if tokens < cfg.min_tokens:
        return "too_short"
    if cfg.max_tokens is not None and tokens > cfg.max_tokens and as_chat(record) is not None:
        return "too_long"  # documents for continued pre-training are packed into blocks, not cut
    text = record_text(record)
    if (repeated_line_fraction(text) > cfg.max_repeated_lines
            or repeated_ngram_fraction(text) > cfg.max_repeated_ngrams
            or _RUN.search(text)):
        return "repetition"
    if text_character_fraction(text) < cfg.min_text_fraction:
        return "garbage"
    if cfg.copy_threshold < 1 and copies_prompt(record, cfg.copy_threshold):
        return "copies_prompt"
    if "label" in record and label_counts[record["label"]] < cfg.min_label_count:
        return "rare_label"
    return None


def run(records: list[dict[str, Any]], recipe: Any, length: Callable[[dict[str, Any]], int]
        ) -> tuple[list[dict[str, Any]], Filters]:
    """The data stage's quality filters on the training rows: the rows kept, and per reason the
    count dropped with a few examples (`length` counts a row's tokens)."""
    cfg = recipe.filters
    labels = Counter(r["label"] for r in records if "label" in r)
    kept, dropped = [], Counter()
    examples: dict[str, list] = {}
    for record in records:
        tokens = length(record)
        reason = drop_reason(record, tokens, cfg, labels)
        if reason is None:
            kept.append(record)
            continue
        dropped[reason] += 1
        shown = examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append({"where": where(record), "text": match_text(record)[:300], "tokens": tokens})
    return kept, Filters(dropped=dict(dropped), examples=examples)
