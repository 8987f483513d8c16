"""Canonical records (DESIGN.md): the one shape every input format becomes, and what every
stage reads. Below the stages: data, models, evaluate and serve all import from here.

    chat            {"messages": [{role, content, reasoning?, tool_calls?, weight?}], "tools"?, "meta"}
    classification  {"text", "label", "meta"}
    text            {"text", "meta"}
    preference      {"prompt": [messages], "chosen", "rejected"} (DPO) or
                    {"prompt": [messages], "completion", "label": bool} (KTO)

`check_record` judges a record as it will be trained; `as_chat` is the conversation a record
trains and evaluates as; `turn_text` is a turn as text for comparisons; `split_reasoning` takes
a `<think>` block off an answer (data, evaluation and serving read reasoning the same way).
"""

from __future__ import annotations

import json
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning, answer) of a text whose reasoning opens it as `<think>...</think>`; (None, text)
    when it does not open with `<think>`. `opened`: the `<think>` was written before the text (by a
    chat template whose generation prompt opens the thinking, as DeepSeek-R1's does), so the text up
    to `</think>` is reasoning. An unclosed block (cut off while thinking) is all reasoning."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN):]
    elif opened:
        body = stripped
    else:
        return None, text
    close = body.find(THINK_CLOSE)
    if close < 0:
        return body.strip(), ""
    return body[:close].strip(), body[close + len(THINK_CLOSE):].lstrip()


class RowError(ValueError):
    """A row that does not fit its format; the message names the field and the fix."""


def check_record(record: dict[str, Any]) -> None:
    """Raise RowError unless the record, as it will be trained, has something to learn from."""
    if "messages" in record:
        check_chat(record["messages"], "messages")
    elif "chosen" in record or "completion" in record:
        check_chat(record["prompt"] + [{"role": "assistant", "content": "answer"}], "prompt")
    elif not record.get("text", "").strip():
        raise RowError('empty "text" after cleaning')
    elif "label" in record and not record["label"].strip():
        raise RowError('empty "label" after cleaning')


def check_chat(messages: list[dict[str, Any]], key: str) -> None:
    turns = [(i, m) for i, m in enumerate(messages) if m["role"] != "system"]
    if not turns:
        raise RowError(f'"{key}" has no user or assistant turn')
    first, message = turns[0]
    if message["role"] != "user":
        article = "an" if message["role"][0] in "aeiou" else "a"
        raise RowError(f"{key}[{first}] is {article} {message['role']} turn with no user turn before it: "
                       "nothing prompts it. Start the conversation with a user turn")
    for (_, previous), (i, message) in zip(turns, turns[1:], strict=False):
        if message["role"] == "tool" and not (previous.get("tool_calls") or previous["role"] == "tool"):
            raise RowError(f"{key}[{i}] is a tool result with no tool call before it")
    for i, message in turns:
        if message["role"] == "user" and not message["content"].strip():
            raise RowError(f"{key}[{i}] is an empty user turn")
    if not any(m["role"] == "assistant" and m.get("weight", 1)
               and (m["content"].strip() or m.get("tool_calls") or m.get("reasoning", "").strip())
               for _, m in turns):
        raise RowError(f'"{key}" has no non-empty assistant turn to learn from')


def turn_text(message: dict[str, Any]) -> str:
    """A turn as text for comparisons (dedup, leakage, filters): reasoning, content, tool calls."""
    calls, reasoning = message.get("tool_calls"), message.get("reasoning")
    if not calls and not reasoning:
        return message["content"]
    rendered = json.dumps([c["function"] for c in calls], ensure_ascii=False, sort_keys=True) if calls else ""
    return "\n".join(t for t in (reasoning or "", message["content"], rendered) if t).strip()


def preference_texts(record: dict[str, Any], with_system: bool = True) -> list[str]:
    """A preference record's turns as text: the prompt's, then chosen / rejected or completion."""
    prompt = [turn_text(m) for m in record["prompt"] if with_system or m["role"] != "system"]
    return prompt + [record[k] for k in ("chosen", "rejected", "completion") if k in record]


def as_chat(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The conversation to train/evaluate on: chat records as they are, classification as
    text -> label; None for plain text records (continued pre-training)."""
    if "messages" in record:
        return record["messages"]
    if "label" in record and "text" in record:
        return [{"role": "user", "content": record["text"]},
                {"role": "assistant", "content": record["label"]}]
    if "prompt" in record:
        answer = record.get("chosen", record.get("completion", ""))
        return [*record["prompt"], {"role": "assistant", "content": answer}]
    return None


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (models often wrap it in prose), or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def answer_field(text: str, field: str) -> str | None:
    """A JSON answer's field as a string (the label of a structured answer), or None."""
    parsed = parse_json_object(text)
    value = parsed.get(field) if parsed else None
    return None if value is None else str(value)
