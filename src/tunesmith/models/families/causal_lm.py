"""The decoder-only (GPT-style) family: next-token prediction, so the loss compares each
position's logits with the following token, and generation returns the prompt followed by the
answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100
"""Label of a token that is not scored (prompt, padding): PyTorch's cross-entropy default."""


@dataclass(frozen=True)
class CausalLM:
    name: str = "causal_lm"
    pipeline_tag: str = "text-generation"
    peft_task_type: str = "CAUSAL_LM"
    generates: bool = True

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def answer_loss_sum(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        import torch

        shifted = logits[:, :-1].float()
        targets = labels[:, 1:].to(shifted.device)
        total = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.size(-1)),
                                                  targets.reshape(-1), ignore_index=IGNORE,
                                                  reduction="sum")
        return total, (targets != IGNORE).sum()

    def generated_tokens(self, output: Any, prompt_length: int) -> Any:
        return output[:, prompt_length:]
