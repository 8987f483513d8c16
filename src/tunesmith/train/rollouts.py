"""GRPO's rollouts (`train.rl.rollouts`): who writes the answers the rewards score.

Generation is where GRPO spends its time. `EngineRollouts` hands TRL's `rollout_func` the answers of
the batched engine evaluation and serving use (`models.generation.HFEngine`): prompts rendered as
evaluation renders them, the prefix every prompt shares (system prompt, template) computed once per
rollout, and the LoRA adapter merged into the weights while it samples (unmerged before the
gradient step), so a decoding step costs the base model's matmuls only. bench/rollouts.py measures
it against TRL's own `generate`. On CUDA with vLLM installed, TRL's vLLM colocate mode.

    engine_for(recipe, device)   which rollouts a run uses (auto: vllm where it runs, else tunesmith)
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.models.families import Family
from tunesmith.models.generation import GenRequest, HFEngine
from tunesmith.recipe import Recipe


def engine_for(recipe: Recipe, device: str) -> str:
    """tunesmith, trl or vllm; vllm asked for where it cannot run is a ConfigError."""
    choice = recipe.train.rl.rollouts
    has_vllm = importlib.util.find_spec("vllm") is not None
    if choice == "vllm" and not (device == "cuda" and has_vllm):
        raise ConfigError(
            "train.rl.rollouts: vllm runs on CUDA with vllm installed (pip install vllm); "
            f"this run trains on {device}{'' if has_vllm else ' without vllm'}. Use "
            "train.rl.rollouts: auto."
        )
    if choice == "auto":
        return "vllm" if device == "cuda" and has_vllm else "tunesmith"
    return choice


class EngineRollouts:
    """TRL's `rollout_func(prompts, trainer)`: one sampled answer per prompt it is given (TRL
    repeats each prompt num_generations times), from the batched engine."""

    def __init__(
        self, tokenizer: Any, family: Family, max_tokens: int, temperature: float, bf16: bool, merge: bool
    ) -> None:
        self.tokenizer, self.family = tokenizer, family
        self.max_tokens, self.temperature, self.bf16, self.merge = max_tokens, temperature, bf16, merge

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        # a new engine each rollout: its prefix cache holds keys and values of the weights as they are now
        engine = HFEngine(model, self.tokenizer, self.family, as_base=contextlib.nullcontext, bf16=self.bf16)
        rendered = [engine.render(p) for p in prompts]
        requests = [GenRequest(text, self.max_tokens, temperature=self.temperature) for text in rendered]
        training, merged = model.training, self.merge and hasattr(model, "merge_adapter")
        if merged:
            model.merge_adapter()
        try:
            results = engine.generate(requests)
        finally:
            if merged:
                model.unmerge_adapter()
            model.train(training)
        eos = self.tokenizer.eos_token_id
        return {
            "prompt_ids": [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered],
            # an answer that ended keeps its end-of-answer token: the model learns where to stop
            "completion_ids": [r.token_ids + ([eos] if r.finish_reason == "stop" else []) for r in results],
            "logprobs": None,
        }
