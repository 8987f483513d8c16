"""Detect a data format from its rows and convert each row to a canonical record (DESIGN.md).

Formats and what they become:
    openai             {messages: [{role, content, tool_calls?, weight?}], tools?}     -> chat
    sharegpt           {conversations: [{from, value}], system?, tools?}                -> chat
                       (from: human | gpt | system | function_call | observation)
    alpaca             {instruction, input?, output, system?, history?}                 -> chat
    prompt_completion  {prompt, completion}                                             -> chat
    classification     {text, label}                                                    -> classification
    text               {text}                                                           -> text
    dpo                {conversations | messages | prompt | instruction, chosen, rejected} -> preference
    dpo_messages       {chosen_messages, rejected_messages} (LLaMA-Factory v1)          -> preference
    kto                {messages | conversations | prompt + completion, label: bool}      -> preference

Each format is one row of `FORMATS`: its name, the record kind it becomes, the keys it needs,
the test that detects it and the function that converts it; a new format is one new row.

Message content may be a string or a list of typed parts (OpenAI `{"type": "text", "text"}`,
LLaMA-Factory `{"type": "text", "value"}`); text parts are joined, `reasoning` parts become the
turn's `reasoning`, `tool_call` parts its `tool_calls`, other parts (images, audio) are counted
in `meta.non_text_parts`, and a turn with nothing to train on is an invalid row. An assistant
turn's reasoning is also read from a `reasoning_content` (or `reasoning`) field, as
OpenAI-compatible servers return it, and from a `<think>...</think>` block that opens its text.
A turn's `weight` (OpenAI) or `loss_weight` (LLaMA-Factory) of 0 keeps it out of the loss.
Tool calls: assistant turns carry `tool_calls: [{type: function, function: {name, arguments}}]`,
results are `tool` turns, and the record's `tools` holds the function schemas.

`convert_row` raises `RowError` with a message that says what is wrong and how to fix it; the
caller prefixes the location (`file:line`). `check_record` judges a record as it will be
trained, after cleaning (a conversation that starts with the assistant has nothing to learn
from, whatever its raw shape was).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import DataError
from tunesmith.records import THINK_CLOSE, THINK_OPEN, RowError, split_reasoning

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool",
                  "function": "tool"}
OPENAI_ROLES = ("system", "user", "assistant", "tool")
TEXT_PART_TYPES = ("text", "input_text", "output_text")
REASONING_PART_TYPES = ("reasoning", "thinking")
TOOL_CALL_PART_TYPES = ("tool_call", "function_call")
REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Fields of an assistant message that hold its reasoning (OpenAI-compatible servers return
`reasoning_content`; some return `reasoning`)."""
META_KEYS = ("id", "group", "domain")
DETECT_SAMPLE = 200


@dataclass(frozen=True)
class Format:
    """One input format: what it becomes, the keys it needs, how it is detected and converted."""

    name: str
    kind: str
    """Canonical record kind: chat, classification, text or preference."""
    required: tuple[str, ...]
    """Keys every row needs (after data.columns); named in detection and row errors."""
    detect: Callable[[dict], bool]
    convert: Callable[[dict, Counter], dict]


def _has(*keys: str) -> Callable[[dict], bool]:
    return lambda row: all(key in row for key in keys)


def _is_kto(row: dict) -> bool:
    return (isinstance(row.get("label"), bool) or "kto_tag" in row) and any(
        k in row for k in ("messages", "conversations", "completion"))


def detect_format(rows: list[Any], source: str) -> str:
    """Pick the format most rows fit (rows are dicts after column mapping)."""
    votes: Counter[str] = Counter()
    keys_seen: Counter[str] = Counter()
    for row in rows[:DETECT_SAMPLE]:
        if not isinstance(row, dict):
            continue
        keys_seen.update(row.keys())
        for fmt in FORMATS:  # in priority order: the first format a row passes gets its vote
            if fmt.detect(row):
                votes[fmt.name] += 1
                break
    if votes:
        return votes.most_common(1)[0][0]
    raise DataError(_undetected(sorted(keys_seen), source))


def _undetected(seen: list[str], source: str) -> str:
    """Why no format fits: the closest one when the rows share a column with it, else every
    format with its columns (a guess from nothing in common would send the user the wrong way)."""
    candidates = [f for f in FORMATS if f.required]
    best = max(candidates, key=lambda f: sum(k in seen for k in f.required) / len(f.required))
    missing = [k for k in best.required if k not in seen]
    if len(missing) < len(best.required):
        return (f"{source}: cannot detect the data format from columns {seen}; closest is {best.name} "
                f"(missing {', '.join(repr(m) for m in missing)}). Rename columns with data.columns "
                f"(e.g. {{{missing[0]}: your_column}}) or set data.format.")
    known = "; ".join(f"{f.name} ({', '.join(f.required)})" for f in candidates)
    return (f"{source}: its columns {seen} match no format tunesmith reads: {known}. Map your columns to "
            "a format's with data.columns, e.g. data.columns: {instruction: <your prompt column>, output: "
            "<your answer column>}.")


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
    spec = FORMAT[fmt]
    for key in spec.required:
        if key not in row or row[key] is None:
            raise RowError(f'missing "{key}" ({fmt} format)')
    parts: Counter = Counter()
    record = spec.convert(row, parts)
    meta = {k: row[k] for k in META_KEYS if row.get(k) not in (None, "")}
    if isinstance(row.get("meta"), dict):
        meta.update(row["meta"])
    if parts:
        meta["non_text_parts"] = dict(parts)
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


@dataclass
class Content:
    """A message content read apart: its text, its reasoning, and tool calls given as parts."""

    text: str
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None


def read_content(value: Any, where: str, fmt: str, parts: Counter) -> Content:
    """A message content: a string, or a list of typed parts (text joined; `reasoning` parts are
    the reasoning, `tool_call` parts tool calls; images, audio ... counted in `parts`)."""
    if value is None:
        return Content("")
    if isinstance(value, str):
        return Content(value)
    if not isinstance(value, list):
        raise RowError(f"{where} must be text or a list of content parts, got {type(value).__name__} "
                       f"({fmt} format)")
    texts, thoughts, calls, other = [], [], [], Counter()
    for number, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError(f"{where}[{number}] must be a content part object ({fmt} format)")
        kind = str(part.get("type", "text"))
        if kind in TEXT_PART_TYPES or kind in REASONING_PART_TYPES:
            text = part.get("text", part.get("value", part.get(kind)))
            if not isinstance(text, str):
                raise RowError(f'{where}[{number}] is a {kind} part without a "text" (or "value") string '
                               f"({fmt} format)")
            (texts if kind in TEXT_PART_TYPES else thoughts).append(text)
        elif kind in TOOL_CALL_PART_TYPES:
            call = part.get("value", part.get("function", part.get(kind)))
            calls += parse_tool_calls(call, f"{where}[{number}]", fmt)
        else:
            other[kind] += 1
    content = Content("".join(texts), "\n\n".join(t for t in thoughts if t.strip()), calls or None)
    if other and not (content.text.strip() or content.tool_calls or content.reasoning.strip()):
        raise RowError(f"{where} holds only {', '.join(sorted(other))} parts and no text; tunesmith "
                       "fine-tunes on text. Add a text part, or drop the row")
    parts.update(other)
    return content


def content_text(value: Any, where: str, fmt: str, parts: Counter) -> str:
    """Text of a message content (an answer or a prompt); reasoning kept out of it."""
    content = read_content(value, where, fmt, parts)
    if content.tool_calls:
        raise RowError(f"{where} holds tool calls where an answer's text is expected ({fmt} format)")
    return content.text


def _turn_weight(message: dict, role: str, where: str, fmt: str) -> int | None:
    """`weight` / `loss_weight` as 0 or 1 (None when absent)."""
    key = "weight" if "weight" in message else "loss_weight" if "loss_weight" in message else None
    if key is None or message[key] is None:
        return None
    value = message[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise RowError(f"{where}.{key} is {value!r}; tunesmith trains a turn fully (1) or not at all "
                       f"(0) ({fmt} format)")
    if role != "assistant" and value == 1:
        raise RowError(f"{where}.{key} is 1 on a {role} turn; only assistant turns are trained "
                       f"({fmt} format)")
    return int(value) if role == "assistant" else None


def parse_tool_calls(value: Any, where: str, fmt: str) -> list[dict[str, Any]]:
    """Tool calls in OpenAI form from a JSON string or list/dict of {name, arguments}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f'{where} is not JSON; a function call is {{"name": ..., "arguments": {{...}}}} '
                           f"({fmt} format)") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise RowError(f'{where}: a function call needs a "name" (and "arguments") ({fmt} format)')
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # else kept as the string the data had
                arguments = json.loads(arguments) if arguments.strip() else {}
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def parse_tools(value: Any, fmt: str) -> list[dict[str, Any]]:
    """The `tools` column: function schemas as a list (or its JSON string); [] when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f'"tools" is not JSON; it lists function schemas ({fmt} format)') from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowError(f'"tools" must be a list of function schemas ({fmt} format)')
    return [t if "function" in t else {"type": "function", "function": t} for t in value]


def _message(raw: dict, role: str, content: Any, where: str, fmt: str, parts: Counter) -> dict[str, Any]:
    read = read_content(content, f"{where}.content" if fmt == "openai" else where, fmt, parts)
    message: dict[str, Any] = {"role": role, "content": read.text}
    if role == "assistant":
        reasoning = [read.reasoning]
        for key in REASONING_FIELDS:
            if isinstance(raw.get(key), str):
                reasoning.append(raw[key])
        thought, message["content"] = _split_answer(read.text)
        reasoning.append(thought or "")
        joined = "\n\n".join(r for r in reasoning if r.strip())
        if joined:
            message["reasoning"] = joined
        if read.tool_calls:
            message["tool_calls"] = read.tool_calls
    elif read.reasoning or read.tool_calls:
        raise RowError(f"{where} is a {role} turn with reasoning or tool_call parts; only assistant turns "
                       f"reason and call tools ({fmt} format)")
    weight = _turn_weight(raw, role, where, fmt)
    if weight is not None:
        message["weight"] = weight
    for key in ("name", "tool_call_id"):
        if role == "tool" and isinstance(raw.get(key), str):
            message[key] = raw[key]
    return message


def _alpaca(row: dict, parts: Counter) -> dict:
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
    messages += [{"role": "user", "content": user}, _answer_turn(_text_field(row, "output", "alpaca"))]
    return {"messages": messages}


def _split_answer(text: str) -> tuple[str | None, str]:
    """An answer's `<think>` block, also as DeepSeek-R1 data has it (no `<think>`, the reasoning up to
    a `</think>`: its template wrote the opening tag)."""
    opened = THINK_CLOSE in text and THINK_OPEN not in text
    return split_reasoning(text, opened=opened)


def _answer_turn(text: str) -> dict[str, Any]:
    """An assistant turn from a plain answer field, its `<think>` block read as its reasoning."""
    reasoning, answer = _split_answer(text)
    return {"role": "assistant", "content": answer} | ({"reasoning": reasoning} if reasoning else {})


def _turns(raw: Any, key: str, fields: tuple[str, ...], needed: tuple[str, ...],
           fmt: str) -> Iterator[tuple[str, dict]]:
    """(location, turn) of each turn of a non-empty list of objects that have the `needed` keys."""
    shape, named = ", ".join(fields), " and ".join(f'"{k}"' for k in fields)
    if not isinstance(raw, list) or not raw:
        raise RowError(f'"{key}" must be a non-empty list of {{{shape}}} ({fmt} format)')
    for number, turn in enumerate(raw):
        where = f"{key}[{number}]"
        if not isinstance(turn, dict) or any(k not in turn for k in needed):
            raise RowError(f"{where} needs {named} ({fmt} format)")
        yield where, turn


def _sharegpt_turns(turns: Any, key: str, parts: Counter) -> list[dict[str, Any]]:
    messages = []
    for where, turn in _turns(turns, key, ("from", "value"), ("from", "value"), "sharegpt"):
        source = str(turn["from"]).lower()
        role = SHAREGPT_ROLES.get(source)
        if role is None:
            raise RowError(f"{where}.from is {turn['from']!r}; expected human, gpt, system, "
                           "function_call or observation (sharegpt format)")
        if source == "function_call":
            calls = parse_tool_calls(turn["value"], f"{where}.value", "sharegpt")
            message = {"role": "assistant", "content": "", "tool_calls": calls}
            weight = _turn_weight(turn, role, where, "sharegpt")
            if weight is not None:
                message["weight"] = weight
            messages.append(message)
            continue
        messages.append(_message(turn, role, turn["value"], f"{where}.value", "sharegpt", parts))
    return messages


def _sharegpt(row: dict, parts: Counter) -> dict:
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    messages += _sharegpt_turns(row["conversations"], "conversations", parts)
    return _with_tools({"messages": messages}, row, "sharegpt")


def _openai_messages(raw: Any, key: str, parts: Counter) -> list[dict[str, Any]]:
    messages = []
    for where, item in _turns(raw, key, ("role", "content"), ("role",), "openai"):
        role = item["role"]
        if role not in OPENAI_ROLES:
            raise RowError(f"{where}.role is {role!r}; expected system, user, assistant or tool "
                           "(openai format)")
        calls = item.get("tool_calls")
        if "content" not in item and not calls:
            raise RowError(f'{where} needs "role" and "content" (openai format)')
        message = _message(item, role, item.get("content"), where, "openai", parts)
        if calls:
            if role != "assistant":
                raise RowError(f"{where}.tool_calls is only allowed on assistant turns (openai format)")
            message["tool_calls"] = (message.get("tool_calls") or []) + parse_tool_calls(
                calls, f"{where}.tool_calls", "openai")
        messages.append(message)
    return messages


def _openai(row: dict, parts: Counter) -> dict:
    return _with_tools({"messages": _openai_messages(row["messages"], "messages", parts)}, row, "openai")


def _with_tools(record: dict, row: dict, fmt: str) -> dict:
    tools = parse_tools(row.get("tools"), fmt)
    if tools:
        record["tools"] = tools
    return record


def _prompt_completion(row: dict, parts: Counter) -> dict:
    return {"messages": [
        {"role": "user", "content": _text_field(row, "prompt", "prompt_completion")},
        _answer_turn(_text_field(row, "completion", "prompt_completion")),
    ]}


def _classification(row: dict, parts: Counter) -> dict:
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise RowError(f'"label" must be text or an integer, got {type(label).__name__} '
                       "(classification format)")
    if not str(label).strip():
        raise RowError('empty "label" (classification format)')
    return {"text": _text_field(row, "text", "classification"), "label": str(label)}


def _text(row: dict, parts: Counter) -> dict:
    return {"text": _text_field(row, "text", "text")}


def _preference_prompt(row: dict, fmt: str, parts: Counter) -> list[dict[str, Any]]:
    """The prompt of a preference row, from whichever column holds it."""
    if "conversations" in row:
        return _sharegpt_turns(row["conversations"], "conversations", parts)
    if isinstance(row.get("messages"), list):
        return _openai_messages(row["messages"], "messages", parts)
    if isinstance(row.get("prompt"), list):
        return _openai_messages(row["prompt"], "prompt", parts)
    if "prompt" in row:
        return [{"role": "user", "content": _text_field(row, "prompt", fmt)}]
    if "instruction" in row:
        extra = _text_field(row, "input", fmt, allow_empty=True)
        instruction = _text_field(row, "instruction", fmt)
        return [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]
    raise RowError(f'no prompt: expected "conversations", "messages", "prompt" or "instruction" '
                   f"({fmt} format)")


def _answer(value: Any, key: str, fmt: str, parts: Counter) -> str:
    """A chosen / rejected / completion answer: text, a {from, value} turn, or messages."""
    if isinstance(value, dict):
        value = value.get("value", value.get("content"))
    elif isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content", value[-1].get("value"))
    text = content_text(value, f'"{key}"', fmt, parts)
    if not text.strip():
        raise RowError(f'empty "{key}" answer ({fmt} format)')
    return text


def _dpo(row: dict, parts: Counter) -> dict:
    return {"prompt": _preference_prompt(row, "dpo", parts),
            "chosen": _answer(row["chosen"], "chosen", "dpo", parts),
            "rejected": _answer(row["rejected"], "rejected", "dpo", parts)}


def _kto(row: dict, parts: Counter) -> dict:
    label = row.get("label", row.get("kto_tag"))
    if not isinstance(label, bool):
        raise RowError(f'"label" must be true or false (desirable or not), got {label!r} (kto format)')
    if "completion" in row:
        return {"prompt": _preference_prompt(row, "kto", parts),
                "completion": _answer(row["completion"], "completion", "kto", parts), "label": label}
    messages = _preference_prompt(row, "kto", parts)
    if messages[-1]["role"] != "assistant":
        raise RowError("the last turn must be the assistant's answer that the label judges (kto format)")
    completion = _answer(messages[-1]["content"], "completion", "kto", parts)
    return {"prompt": messages[:-1], "completion": completion, "label": label}


def _v1_preference(row: dict, parts: Counter) -> dict:
    """LLaMA-Factory v1: two whole conversations that share a prompt and differ in the last answer."""
    fmt = "dpo_messages"
    chosen = _openai_messages(row["chosen_messages"], "chosen_messages", parts)
    rejected = _openai_messages(row["rejected_messages"], "rejected_messages", parts)
    for key, messages in (("chosen_messages", chosen), ("rejected_messages", rejected)):
        if messages[-1]["role"] != "assistant":
            raise RowError(f'"{key}" must end with the assistant answer being judged ({fmt} format)')
    # v1's loss weights only mark the judged last turn, which DPO trains anyway: the prompt goes without
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in chosen[:-1]]
    if prompt != [{k: v for k, v in m.items() if k != "weight"} for m in rejected[:-1]]:
        raise RowError(f'"chosen_messages" and "rejected_messages" must share every turn but the last '
                       f"({fmt} format)")
    answers = []
    for key, message in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
        if message.get("tool_calls") or not message["content"].strip():
            raise RowError(f'the {key} answer must be non-empty text ({fmt} format)')
        answers.append(message["content"])
    return {"prompt": prompt, "chosen": answers[0], "rejected": answers[1]}


FORMATS: tuple[Format, ...] = (  # detection priority: the first format a row passes gets its vote
    Format("dpo", "preference", ("chosen", "rejected"), _has("chosen", "rejected"), _dpo),
    Format("dpo_messages", "preference", ("chosen_messages", "rejected_messages"),
           _has("chosen_messages", "rejected_messages"), _v1_preference),
    Format("kto", "preference", (), _is_kto, _kto),
    Format("openai", "chat", ("messages",), _has("messages"), _openai),
    Format("sharegpt", "chat", ("conversations",), _has("conversations"), _sharegpt),
    Format("alpaca", "chat", ("instruction", "output"), _has("instruction", "output"), _alpaca),
    Format("prompt_completion", "chat", ("prompt", "completion"), _has("prompt", "completion"),
           _prompt_completion),
    Format("classification", "classification", ("text", "label"), _has("text", "label"), _classification),
    Format("text", "text", ("text",), _has("text"), _text),
)
FORMAT = {f.name: f for f in FORMATS}
