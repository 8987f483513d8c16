"""Batched greedy generation for evaluation, behind a small Protocol so tests can pass a fake.

Prompts are sorted by length and generated in batches with left padding (batched generation
measured ~6x faster than one prompt at a time for SmolLM2 on the CPU), then put back in order.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunesmith.console import PlainProgress
from tunesmith.models.chat import render_prompt
from tunesmith.models.families import Family
from tunesmith.models.families.causal_lm import CausalLM


class Generator(Protocol):
    def generate(self, prompts: list[list[dict]], label: str) -> list[str]:
        """One answer per conversation prompt (each a list of messages)."""
        ...


@dataclass
class HFGenerator:
    model: Any
    tokenizer: Any
    max_new_tokens: int
    batch_size: int
    autocast_bf16: bool = False
    family: Family = field(default_factory=CausalLM)
    examples_per_second: float = 0.0

    def generate(self, prompts: list[list[dict]], label: str) -> list[str]:
        import torch
        from rich.console import Console
        from rich.progress import Progress

        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        answers: list[str] = [""] * len(texts)
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        device = next(self.model.parameters()).device
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if self.autocast_bf16
                    else contextlib.nullcontext())
        self.model.eval()
        started = time.time()
        terminal = Console(stderr=True).is_terminal
        plain = None if terminal else PlainProgress(f"generate {label}", len(texts))
        with Progress(transient=True, disable=not terminal, console=Console(stderr=True)) as progress, \
                torch.inference_mode(), autocast:
            task = progress.add_task(f"generate {label}", total=len(texts))
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                encoded = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                                    add_special_tokens=False).to(device)
                output = self.model.generate(
                    **encoded, max_new_tokens=self.max_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
                new_tokens = self.family.generated_tokens(output, encoded["input_ids"].shape[1])
                for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True),
                                   strict=True):
                    answers[i] = text.strip()
                progress.advance(task, len(batch))
                if plain is not None:  # logs and pipes get a line every few seconds instead
                    plain.advance(len(batch))
        self.examples_per_second = len(texts) / max(time.time() - started, 1e-9)
        return answers
