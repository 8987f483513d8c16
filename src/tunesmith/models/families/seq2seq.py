"""The encoder-decoder (T5-style) family: the encoder reads the prompt, the decoder writes the
answer. So the loss compares each decoder position's logits with the same position's label (no
shift: the model shifts the labels into decoder inputs itself), and `generate` returns only the
answer, after the decoder's start token.

A prompt is the conversation's text before the answer (system, user and earlier turns, one per
line): T5 and Flan-T5 have no chat template and were trained on plain instructions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.models.families.causal_lm import IGNORE


@dataclass(frozen=True)
class Seq2Seq:
    name: str = "seq2seq"
    pipeline_tag: str = "text2text-generation"
    peft_task_type: str = "SEQ_2_SEQ_LM"
    generates: bool = True

    def auto_class(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def answer_loss_sum(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        import torch

        targets = labels.to(logits.device)
        total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                  targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
        return total, (targets != IGNORE).sum()

    def generated_tokens(self, output: Any, prompt_length: int) -> Any:
        return output[:, 1:]  # the decoder's start token, then the answer


def source_text(messages: list[dict]) -> str:
    """The encoder's input: every turn before the answer, one per line."""
    return "\n".join(m["content"] for m in messages if m.get("content"))


def tokenize_pair(tokenizer: Any, prompt: list[dict], answer: str, max_length: int) -> dict[str, list[int]]:
    """input_ids / attention_mask of the prompt and labels of the answer (ending in EOS), each cut
    to max_length."""
    source = tokenizer(source_text(prompt), truncation=True, max_length=max_length)
    target = tokenizer(answer, truncation=True, max_length=max_length - 1)["input_ids"]
    if tokenizer.eos_token_id is not None and (not target or target[-1] != tokenizer.eos_token_id):
        target = [*target, tokenizer.eos_token_id]
    return {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"], "labels": target}
