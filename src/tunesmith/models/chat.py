"""Turn canonical records into token ids with a loss mask, and into generation prompts.

The chat template comes from the tokenizer (or `model.chat_template`). Assistant tokens are
found without special `{% generation %}` markers, so any prefix-consistent template works:
the conversation is rendered up to each assistant turn (with the generation prompt) and up to
its end, and the characters between are that turn's answer. Tokens whose characters fall in
an answer get mask 1; `weight: 0` turns (OpenAI format) are left out of the loss.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.formats import as_chat
from tunesmith.errors import ModelError


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template, and the data is chat. Set model.chat_template "
            "to a Jinja template, or use an instruct model."
        )


def answer_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trainable assistant turns."""
    _require_template(tokenizer)
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i == 0 or message.get("weight", 1) == 0:
            continue
        start = len(_render(tokenizer, messages[:i], generation_prompt=True))
        end = len(_render(tokenizer, messages[: i + 1], generation_prompt=False))
        if not text.startswith(_render(tokenizer, messages[: i + 1], generation_prompt=False)):
            raise ModelError(
                "the chat template renders a conversation differently from its prefixes, so "
                "assistant turns cannot be located. Set train.loss_on: all, or model.chat_template."
            )
        spans.append((start, end))
    return text, spans


def tokenize_record(
    tokenizer: Any, record: dict[str, Any], loss_on: str, max_length: int, system_prompt: str | None
) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` (1 = in the loss) for one canonical record."""
    messages = as_chat(record)
    if messages is None:  # plain text: continued pre-training, every token counts
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        ids = ids[:max_length]
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    text, spans = answer_spans(tokenizer, with_system(messages, system_prompt))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if loss_on == "all":
        mask = [1] * len(ids)
    else:
        mask = [int(any(s <= start < e for s, e in spans)) for start, _end in offsets]
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def prompt_and_reference(record: dict[str, Any], system_prompt: str | None) -> tuple[list[dict], str]:
    """For evaluation: the conversation up to its last assistant turn, and that turn's text."""
    messages = as_chat(record)
    if messages is None:
        raise ModelError("generation metrics need chat or classification records, not plain text.")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return with_system(messages[:last], system_prompt), messages[last]["content"]


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    _require_template(tokenizer)
    return _render(tokenizer, messages, generation_prompt=True)
