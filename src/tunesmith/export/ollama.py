"""The Ollama Modelfile beside an exported GGUF: the file, the template, the system prompt, the stop
tokens and the decoding the run was evaluated with (greedy, eval.max_new_tokens).

Ollama's templates are Go templates, not the Jinja of the model's tokenizer: for the two families
most small models use (ChatML: SmolLM2, Qwen; Llama 3) the Modelfile carries the Go form of the
same layout. The system prompt is what the export's own template puts in front of a conversation
without one (the run's `data.system_prompt`, else the template's default), so that Ollama's
prompt is the text evaluation scored. For any other template the Modelfile leaves TEMPLATE out
and Ollama reads the chat template from the GGUF's metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.recipe import Recipe

LAYOUTS = {
    "chatml": ("<|im_start|>",
               "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
               "<|im_start|>assistant\n",
               r"<\|im_start\|>system\n(.*?)<\|im_end\|>", ["<|im_end|>", "<|im_start|>"]),
    "llama3": ("<|start_header_id|>",
               "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}"
               "<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
               r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
               ["<|eot_id|>", "<|start_header_id|>"]),
}
"""Family -> (marker in the Jinja template, Go template, the system block's pattern, stop tokens)."""


def context_length(recipe: Recipe) -> int:
    """The context llama.cpp and Ollama open: the longest training row plus evaluation's answer
    budget, and no less than 2048 (llama.cpp's own default)."""
    return max(2048, recipe.train.max_length + recipe.eval.max_new_tokens)


def layout(template: str) -> str | None:
    return next((name for name, (marker, *_rest) in LAYOUTS.items() if marker in template), None)


def _quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(merged: Path, gguf_name: str, recipe: Recipe) -> str:
    """The Modelfile for `gguf_name` (beside it), from the merged model's tokenizer and template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    family = layout(template)
    lines = [f"# tunesmith export of {recipe.name}: ollama create {recipe.name} -f Modelfile",
             f"FROM ./{gguf_name}"]
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    if family is None:
        lines.append("# no TEMPLATE: Ollama reads the chat template from the GGUF's metadata")
    else:
        _marker, go_template, system_block, family_stops = LAYOUTS[family]
        lines.append(f"TEMPLATE {_quoted(go_template)}")
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "."}], tokenize=False,
                                                 add_generation_prompt=True)
        found = re.search(system_block, rendered, re.DOTALL)
        if found:
            lines.append(f"SYSTEM {_quoted(found.group(1))}")
        stops += [s for s in family_stops if s not in stops]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0", "PARAMETER top_k 1",
              f"PARAMETER num_predict {recipe.eval.max_new_tokens}",
              f"PARAMETER num_ctx {context_length(recipe)}"]
    return "\n".join(lines) + "\n"
