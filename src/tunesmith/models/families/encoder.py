"""The encoder (BERT-style) family: a sequence-classification head on the encoder's pooled
output. Examples are (text, label) pairs: a classification record's own, or a chat record's user
turns and its answer (the answer's `eval.label_field` when set, e.g. the ticket's category), so
the demo's ticket data trains a decoder and an encoder alike. The loss is the cross-entropy of
the head's logits against the label's index; answers are label names, never generated text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.models.families.causal_lm import IGNORE


@dataclass(frozen=True)
class Encoder:
    name: str = "encoder"
    pipeline_tag: str = "text-classification"
    peft_task_type: str = "SEQ_CLS"
    generates: bool = False

    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def answer_loss_sum(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        """logits (batch, classes) against labels (batch,) of class indices (-100: not scored)."""
        import torch

        labels = labels.to(logits.device)
        total = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE,
                                                  reduction="sum")
        return total, (labels != IGNORE).sum()

    def generated_tokens(self, output: Any, prompt_length: int) -> Any:
        raise ModelError("an encoder classifies; it does not generate. Serve or evaluate it through "
                         "tunesmith's classifier path (model.family: encoder).")
