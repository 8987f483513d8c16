"""Turn canonical records into token ids with a loss mask, and into generation prompts.

The chat template comes from the tokenizer (or `model.chat_template`). Assistant tokens are
found without special `{% generation %}` markers, so any prefix-consistent template works:
the conversation is rendered up to each assistant turn (with the generation prompt) and up to
its end, and the characters between are that turn's answer. Tokens whose characters fall in
an answer get mask 1; `weight: 0` turns are left out of the loss.

Tool calling: a template that knows tools (it mentions `tools` / `tool_calls`, as Qwen's, Llama
3.1's and Mistral's do) gets the record's `tools` and the turns' `tool_calls` as they are. Any
other template gets the documented fallback (the Hermes / Qwen convention, plain text that
every template can render): the tool schemas in the system message inside `<tools></tools>`,
each call as `<tool_call>{"name", "arguments"}</tool_call>` in the assistant's text (so the
calls are in the loss), and each result as a user turn inside `<tool_response></tool_response>`
(never in the loss). For generation, a prompt (a list of messages) carries the record's tools
on its first message under the key `tools`.

Reasoning: an assistant turn's `reasoning` goes to a template that knows it (it mentions
`reasoning_content`, as Qwen3's does) as that field; any other template gets the documented
fallback, `<think>\n{reasoning}\n</think>\n\n` before the turn's text (the DeepSeek-R1 / Qwen3
convention). `train.reasoning` decides its place in the loss: `train` in it, `mask` rendered but
out of the loss (the whole `<think>` block), `drop` removed before rendering.
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.records import THINK_CLOSE, THINK_OPEN, as_chat

TOOLS_PREAMBLE = ("You can call these functions. To call one, answer with "
                  '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.')


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def knows_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and ("tool_calls" in template or "tools" in template)


def knows_reasoning(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "reasoning_content" in template


def opens_thinking(tokenizer: Any) -> bool:
    """Whether the template's generation prompt opens a `<think>` block itself (DeepSeek-R1's): the
    answer's text up to `</think>` is then reasoning."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        prompt = _render(tokenizer, [{"role": "user", "content": "x"}], True)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe does not open thinking
        return False
    return prompt.rstrip().endswith(THINK_OPEN)


def think_block(reasoning: str) -> str:
    """The fallback rendering of reasoning, before the answer's text."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n"


def without_reasoning(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "reasoning"} for m in messages]


def _reasoning_rendered(messages: list[dict], native: bool) -> list[dict]:
    """Turns with reasoning as the template reads them: `reasoning_content`, or a <think> block."""
    if not any(m.get("reasoning") for m in messages):
        return messages
    out = []
    for message in messages:
        reasoning = message.get("reasoning")
        message = {k: v for k, v in message.items() if k != "reasoning"}
        if reasoning and native:
            message["reasoning_content"] = reasoning
        elif reasoning:
            message["content"] = think_block(reasoning) + message["content"]
        out.append(message)
    return out


def tool_call_text(calls: list[dict[str, Any]]) -> str:
    """The fallback text of tool calls (also the reference an evaluation compares against)."""
    return "\n".join("<tool_call>\n" + json.dumps(c["function"], ensure_ascii=False) + "\n</tool_call>"
                     for c in calls)


def _fallback(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Tool calls, results and schemas as plain text in user/assistant/system turns."""
    out = []
    for message in messages:
        role, content = message["role"], message["content"]
        if message.get("tool_calls"):
            content = "\n".join(t for t in (content, tool_call_text(message["tool_calls"])) if t)
        if role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if tools:
        schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        block = f"{TOOLS_PREAMBLE}\n<tools>\n{schemas}\n</tools>"
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool,
            tools: list[dict] | None = None) -> str:
    tools = tools or next((m["tools"] for m in messages if m.get("tools")), None)
    messages = _reasoning_rendered(messages, knows_reasoning(tokenizer))
    uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if uses_tools and not knows_tools(tokenizer):
        return tokenizer.apply_chat_template(_fallback(messages, tools), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    keep = ("role", "content", "reasoning_content", "tool_calls", "name", "tool_call_id")
    plain = [{k: m[k] for k in keep if k in m} for m in messages]
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt,
                                         **extra)


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template, and the data is chat. Set model.chat_template: chatml "
            "(the documented default), or your own Jinja template, or use an instruct model."
        )


def answer_spans(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None,
                 reasoning: str = "train") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trainable assistant turns
    (without their reasoning when `reasoning` is mask; with it removed when drop)."""
    _require_template(tokenizer)
    if reasoning == "drop":
        messages = without_reasoning(messages)
    text = _render(tokenizer, messages, False, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i == 0 or message.get("weight", 1) == 0:
            continue
        start = len(_render(tokenizer, messages[:i], True, tools))
        end = len(_render(tokenizer, messages[: i + 1], False, tools))
        if not text.startswith(_render(tokenizer, messages[: i + 1], False, tools)):
            raise ModelError(
                "the chat template renders a conversation differently from its prefixes, so "
                "assistant turns cannot be located. Set train.loss_on: all, or model.chat_template."
            )
        if reasoning == "mask" and message.get("reasoning"):
            start = _after_reasoning(text, start, end, message["reasoning"])
        spans.append((start, end))
    return text, spans


def _after_reasoning(text: str, start: int, end: int, reasoning: str) -> int:
    """Where a turn's answer starts after its reasoning block (and the </think> that closes it)."""
    found = text.find(reasoning, start, end)
    if found < 0:
        raise ModelError("the chat template does not render the reasoning of an assistant turn as given, so "
                         "it cannot be kept out of the loss. Set train.reasoning: train or drop, or "
                         "model.chat_template.")
    stop = found + len(reasoning)
    close = text.find(THINK_CLOSE, stop, end)
    if close >= 0 and not text[stop:close].strip():
        stop = close + len(THINK_CLOSE)
    while stop < end and text[stop].isspace():
        stop += 1
    return stop


def tokenize_record(
    tokenizer: Any, record: dict[str, Any], loss_on: str, max_length: int, system_prompt: str | None,
    reasoning: str = "train",
) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` (1 = in the loss) for one canonical record."""
    messages = as_chat(record)
    if messages is None:  # plain text: continued pre-training, every token counts
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        ids = ids[:max_length]
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    text, spans = answer_spans(tokenizer, with_system(messages, system_prompt), record.get("tools"),
                               reasoning)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if loss_on == "all":
        mask = [1] * len(ids)
    else:
        mask = [int(any(s <= start < e for s, e in spans)) for start, _end in offsets]
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def training_rows(tokenizer: Any, records: list[dict[str, Any]], train: Any,
                  system_prompt: str | None) -> list[dict[str, list[int]]]:
    """The token rows a decoder trains (and is validated) on, per `train` (the recipe's TrainConfig):
    chat records one row each (`train.loss_on`, `train.reasoning`); text records (continued
    pre-training) as documents packed into `train.max_length` blocks, EOS between documents."""
    if records and as_chat(records[0]) is None:
        return pack_documents(tokenizer, [r["text"] for r in records], train.max_length)
    return [tokenize_record(tokenizer, r, train.loss_on, train.max_length, system_prompt, train.reasoning)
            for r in records]


def pack_documents(tokenizer: Any, texts: list[str], block: int) -> list[dict[str, list[int]]]:
    """Documents tokenized, joined with EOS after each, and cut into blocks of `block` tokens
    (the last one shorter); every token is in the loss. No document is cut off: one longer than a
    block continues in the next, as in pre-training."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    blocks = [stream[i:i + block] for i in range(0, len(stream), block)]
    return [{"input_ids": ids, "assistant_masks": [1] * len(ids)} for ids in blocks if len(ids) > 1]


def prompt_and_reference(record: dict[str, Any], system_prompt: str | None) -> tuple[list[dict], str]:
    """For evaluation: the conversation up to its last assistant turn, and that turn's text."""
    messages = as_chat(record)
    if messages is None:
        raise ModelError("generation metrics need chat or classification records, not plain text.")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = with_system(messages[:last], system_prompt)
    if record.get("tools"):
        prompt = [{**prompt[0], "tools": record["tools"]}, *prompt[1:]]
    answer = messages[last]
    reference = answer["content"]
    if answer.get("tool_calls"):
        reference = "\n".join(t for t in (reference, tool_call_text(answer["tool_calls"])) if t)
    return prompt, reference


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    _require_template(tokenizer)
    return _render(tokenizer, messages, True)
