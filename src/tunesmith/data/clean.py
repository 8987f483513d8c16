"""Normalise text and conversation shape, so later checks compare like with like.

Text: mojibake repaired (ftfy), Unicode NFC, control characters removed (newlines and tabs
kept), trailing spaces and runs of blank lines tidied (indentation kept). Conversations: empty turns dropped,
system messages moved to the front (several are joined), consecutive turns of the same role
merged (an assistant's text and its tool calls become one turn; tool results stay separate),
and trailing user turns with no answer dropped. Each change is counted.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str, counts: Counter | None = None) -> str:
    import ftfy

    # Only repairs of broken text: curly quotes, ligatures, full-width characters and HTML
    # entities are legitimate content and stay as they are.
    fixed = ftfy.fix_text(text, normalization="NFC", uncurl_quotes=False, fix_latin_ligatures=False,
                          fix_character_width=False, unescape_html=False,
                          remove_control_chars=False)  # counted separately below
    if counts is not None and fixed != unicodedata.normalize("NFC", text):
        counts["mojibake_repaired"] += 1
    cleaned = _CONTROL.sub("", fixed)
    if counts is not None and cleaned != fixed:
        counts["control_characters_removed"] += 1
    # Runs of spaces inside a line are kept: they are indentation in code and tables.
    tidy = _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("\n", cleaned)).strip()
    if counts is not None and tidy != cleaned:
        counts["whitespace_normalised"] += 1
    return tidy


def normalise_messages(messages: list[dict[str, Any]], counts: Counter) -> list[dict[str, Any]]:
    system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    if any(m["role"] == "system" for m in messages[1:]):
        counts["system_moved_to_front"] += 1
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        if not message["content"] and not message.get("tool_calls") and not message.get("reasoning"):
            counts["empty_turns_dropped"] += 1
            continue
        previous = turns[-1] if turns else None
        if (previous and previous["role"] == message["role"] != "tool"
                and previous.get("weight", 1) == message.get("weight", 1)):
            counts["same_role_turns_merged"] += 1
            turns[-1] = _merged(previous, message)
            continue
        turns.append(dict(message))
    while turns and turns[-1]["role"] != "assistant":
        counts["unanswered_turns_dropped"] += 1
        turns.pop()
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return head + turns


def _merged(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two consecutive turns of one role as one (an answer followed by its tool call, say)."""
    merged = {**first, "content": "\n\n".join(t for t in (first["content"], second["content"]) if t)}
    reasoning = "\n\n".join(t for t in (first.get("reasoning"), second.get("reasoning")) if t)
    if reasoning:
        merged["reasoning"] = reasoning
    calls = (first.get("tool_calls") or []) + (second.get("tool_calls") or [])
    if calls:
        merged["tool_calls"] = calls
    return merged


def normalise_record(record: dict[str, Any], counts: Counter) -> dict[str, Any]:
    """A cleaned copy of a canonical record (chat, classification or text)."""
    out = dict(record)
    if "messages" in record:
        messages = [{**m, "content": normalise_text(m["content"], counts)}
                    | ({"reasoning": normalise_text(m["reasoning"], counts)} if m.get("reasoning") else {})
                    for m in record["messages"]]
        out["messages"] = normalise_messages(messages, counts)
    else:
        out["text"] = normalise_text(record["text"], counts)
        if "label" in record:
            out["label"] = normalise_text(record["label"], counts)
    return out
