"""Detect a data format from its rows and convert each row to a canonical record (DESIGN.md).

Formats and what they become:
    alpaca             {instruction, input?, output, system?, history?}     -> chat
    sharegpt           {conversations: [{from: human|gpt|system, value}]}   -> chat
    openai             {messages: [{role, content, weight?}]}                -> chat
    prompt_completion  {prompt, completion}                                  -> chat
    classification     {text, label}                                         -> classification
    text               {text}                                                -> text

`convert_row` raises `RowError` with a message that says what is wrong and how to fix it;
the caller prefixes the location (`file:line`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunesmith.errors import DataError

# Required and optional keys of each format, in detection priority order.
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "openai": (("messages",), ()),
    "sharegpt": (("conversations",), ("system",)),
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "prompt_completion": (("prompt", "completion"), ()),
    "classification": (("text", "label"), ()),
    "text": (("text",), ()),
}
RECORD_KIND = {"openai": "chat", "sharegpt": "chat", "alpaca": "chat",
               "prompt_completion": "chat", "classification": "classification", "text": "text"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system"}
META_KEYS = ("id", "group", "domain")
DETECT_SAMPLE = 200


class RowError(ValueError):
    """A row that does not fit its format; the message names the field and the fix."""


def detect_format(rows: list[Any], source: str) -> str:
    """Pick the format whose required keys most rows have (rows are dicts after column mapping)."""
    votes: Counter[str] = Counter()
    keys_seen: Counter[str] = Counter()
    for row in rows[:DETECT_SAMPLE]:
        if not isinstance(row, dict):
            continue
        keys_seen.update(row.keys())
        for name, (required, _optional) in FORMATS.items():
            if all(key in row for key in required):
                votes[name] += 1
                break
    if votes:
        return votes.most_common(1)[0][0]
    seen = sorted(keys_seen)
    closest = max(FORMATS, key=lambda n: sum(k in keys_seen for k in FORMATS[n][0]) / len(FORMATS[n][0]))
    missing = [k for k in FORMATS[closest][0] if k not in keys_seen]
    raise DataError(
        f"{source}: cannot detect the data format from columns {seen}; closest is {closest} "
        f"(missing {', '.join(repr(m) for m in missing)}). Rename columns with data.columns "
        f"(e.g. {{{missing[0]}: your_column}}) or set data.format."
    )


def map_columns(row: Any, columns: dict[str, str]) -> Any:
    """Rename user columns to format names: `columns` maps format name -> user column name."""
    if not columns or not isinstance(row, dict):
        return row
    renamed = dict(row)
    for ours, theirs in columns.items():
        if theirs in renamed:
            renamed[ours] = renamed.pop(theirs)
    return renamed


def convert_row(row: Any, fmt: str) -> dict[str, Any]:
    """Convert one row of format `fmt` to its canonical record (without location meta)."""
    if not isinstance(row, dict):
        raise RowError(f"expected an object with keys, got {type(row).__name__} ({fmt} format)")
    required, _ = FORMATS[fmt]
    for key in required:
        if key not in row or row[key] is None:
            raise RowError(f'missing "{key}" ({fmt} format)')
    record = _CONVERTERS[fmt](row)
    meta = {k: row[k] for k in META_KEYS if row.get(k) not in (None, "")}
    if isinstance(row.get("meta"), dict):
        meta.update(row["meta"])
    record["meta"] = meta
    return record


def _text_field(row: dict, key: str, fmt: str, allow_empty: bool = False) -> str:
    value = row.get(key)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RowError(f'"{key}" must be text, got {type(value).__name__} ({fmt} format)')
    if not allow_empty and not value.strip():
        raise RowError(f'empty "{key}" ({fmt} format)')
    return value


def _alpaca(row: dict) -> dict:
    messages = []
    system = _text_field(row, "system", "alpaca", allow_empty=True)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError('"history" must be a list of [question, answer] pairs (alpaca format)')
    for turn, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f'"history"[{turn}] must be [question, answer] text pair (alpaca format)')
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    instruction = _text_field(row, "instruction", "alpaca")
    extra = _text_field(row, "input", "alpaca", allow_empty=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": user},
                 {"role": "assistant", "content": _text_field(row, "output", "alpaca")}]
    return {"messages": messages}


def _sharegpt(row: dict) -> dict:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RowError('"conversations" must be a non-empty list of {from, value} (sharegpt format)')
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(f'conversations[{number}] needs "from" and "value" (sharegpt format)')
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RowError(
                f'conversations[{number}].from is {turn["from"]!r}; expected human, gpt or system '
                "(sharegpt format)"
            )
        if not isinstance(turn["value"], str):
            raise RowError(f"conversations[{number}].value must be text (sharegpt format)")
        messages.append({"role": role, "content": turn["value"]})
    return {"messages": _checked_chat(messages, "sharegpt", "conversations")}


def _openai(row: dict) -> dict:
    raw = row["messages"]
    if not isinstance(raw, list) or not raw:
        raise RowError('"messages" must be a non-empty list of {role, content} (openai format)')
    messages = []
    for number, message in enumerate(raw):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError(f'messages[{number}] needs "role" and "content" (openai format)')
        role = message["role"]
        if role not in ("system", "user", "assistant"):
            raise RowError(
                f"messages[{number}].role is {role!r}; expected system, user or assistant (openai format)"
            )
        content = message["content"]
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RowError(f"messages[{number}].content must be text (openai format)")
        converted: dict[str, Any] = {"role": role, "content": content}
        if "weight" in message:
            if message["weight"] not in (0, 1):
                raise RowError(f"messages[{number}].weight must be 0 or 1 (openai format)")
            if role != "assistant":
                raise RowError(f"messages[{number}].weight is only allowed on assistant turns "
                               "(openai format)")
            converted["weight"] = int(message["weight"])
        messages.append(converted)
    return {"messages": _checked_chat(messages, "openai", "messages")}


def _checked_chat(messages: list[dict], fmt: str, key: str) -> list[dict]:
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RowError(f'"{key}" has no non-empty assistant turn to learn from ({fmt} format)')
    if not any(m["role"] == "user" for m in messages):
        raise RowError(f'"{key}" has no user turn ({fmt} format)')
    return messages


def _prompt_completion(row: dict) -> dict:
    return {"messages": [
        {"role": "user", "content": _text_field(row, "prompt", "prompt_completion")},
        {"role": "assistant", "content": _text_field(row, "completion", "prompt_completion")},
    ]}


def _classification(row: dict) -> dict:
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise RowError(f'"label" must be text or an integer, got {type(label).__name__} '
                       "(classification format)")
    if not str(label).strip():
        raise RowError('empty "label" (classification format)')
    return {"text": _text_field(row, "text", "classification"), "label": str(label)}


def _text(row: dict) -> dict:
    return {"text": _text_field(row, "text", "text")}


_CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai": _openai,
               "prompt_completion": _prompt_completion, "classification": _classification,
               "text": _text}


def as_chat(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The conversation to train/evaluate on: chat records as they are, classification as
    text -> label; None for plain text records (continued pre-training)."""
    if "messages" in record:
        return record["messages"]
    if "label" in record:
        return [{"role": "user", "content": record["text"]},
                {"role": "assistant", "content": record["label"]}]
    return None
