"""What every recipe section shares: strict keys, attribute docstrings, validated defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

FormatName = Literal[
    "auto", "alpaca", "sharegpt", "openai", "prompt_completion", "text", "classification", "dpo", "kto"
]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
"""The documented default for base models without a chat template: `model.chat_template: chatml`."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True,
                              allow_inf_nan=False)


def _terms_given(lexicon: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """A group with no (or an empty) term would match every text: refuse it."""
    for dimension, groups in lexicon.items():
        for group, terms in groups.items():
            if not terms or any(not str(t).strip() for t in terms):
                raise ValueError(f"{dimension}.{group}: give each group one or more non-empty terms")
    return lexicon

