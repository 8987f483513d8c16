"""`tunesmith export RUN_DIR OUT`: the run's model as one plain model directory that vLLM, TGI and
transformers load unchanged, and that answers as the run was scored.

What "as scored" takes, and what the export writes for it:
- the weights: LoRA merged into its base, safetensors, in the dtype serving engines expect
  (`--dtype`, bf16 by default; fp32 reproduces the evaluation's fp32 answers exactly);
- the prompt: the recipe's `data.system_prompt` built into the exported tokenizer's chat template
  (added when a conversation has no system message, as training and evaluation added it), and
  `model.chat_template` when the recipe set one;
- the decoding: `generation_config.json` with greedy decoding and `eval.max_new_tokens`, as
  evaluation generated;
- `tunesmith_export.json`: the run, the dtype and what was built in.

`tunesmith export RUN OUT --check` then loads the export with plain transformers, applies its
own chat template to the run's test prompts with no help (what vLLM and TGI do), and prints how
many answers agree with `tunesmith eval`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.export.check import (
    Agreement,
    agreement,
    checked_run,
    manifest,
    new_directory,
    refuse_a_full_directory,
)
from tunesmith.recipe import Recipe

DTYPES = ("bfloat16", "float16", "float32")
MANIFEST = "tunesmith_export.json"


def template_with_system(template: str, system_prompt: str | None) -> str:
    """`template` that adds `system_prompt` to a conversation without a system message (a Jinja
    top-level `set` of `messages`, as Llama 3's own template reassigns it)."""
    if not system_prompt:
        return template
    literal = json.dumps(system_prompt, ensure_ascii=True)  # a valid Jinja string literal
    return ("{%- if not (messages and messages[0]['role'] == 'system') %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}"
            "{%- endif %}" + template)


def export_merged(run_path: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Write the merged, servable model of a run into the new directory `out` (whole or not at all)."""
    import torch

    from tunesmith.models.loading import load_run_model

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: choose {', '.join(DTYPES)}.")
    run, recipe = checked_run(run_path)
    refuse_a_full_directory(out)  # before the model is loaded
    run_model = load_run_model(recipe.model, recipe.train.weights, run.model)
    model = run_model.model.merge_and_unload() if recipe.train.adapter == "lora" else run_model.model
    model = model.to(getattr(torch, dtype))
    tokenizer = run_model.tokenizer
    template = tokenizer.chat_template
    if isinstance(template, str):
        tokenizer.chat_template = template_with_system(template, recipe.data.system_prompt)
    _generation_settings(model, tokenizer, recipe)
    with new_directory(out) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MANIFEST).write_text(manifest(
            run, recipe, dtype=dtype, adapter_merged=recipe.train.adapter == "lora",
            chat_template_from_recipe=recipe.model.chat_template is not None))
    return Path(out)


def _generation_settings(model: Any, tokenizer: Any, recipe: Recipe) -> None:
    """Greedy decoding with evaluation's budget, the tokenizer's EOS and padding."""
    config = model.generation_config
    config.do_sample = False
    for sampling in ("temperature", "top_p", "top_k"):  # greedy: sampling settings would only warn
        setattr(config, sampling, None)
    config.max_new_tokens = recipe.eval.max_new_tokens
    config.eos_token_id = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id


def check_export(run_path: str | Path, export: str | Path, limit: int = 30) -> Agreement:
    """Answer the run's first `limit` test prompts with the export in plain transformers (its own
    chat template, its generation_config, one prompt at a time and no system prompt from us) and
    compare with the fine-tuned answers of eval/predictions.jsonl."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, recipe = checked_run(run_path)
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype="auto")
    model.eval()

    def answer(prompt: list[dict[str, Any]]) -> str:
        inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            output = model.generate(**inputs)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    manifest = Path(export) / MANIFEST
    dtype = (json.loads(manifest.read_text())["dtype"] if manifest.exists()
             else str(model.dtype).removeprefix("torch."))
    return agreement(run, recipe, answer, dtype, limit)
