"""Model families: what differs between a decoder (GPT-style), an encoder (BERT-style) and an
encoder-decoder (T5-style), behind one small protocol, so that loading, the LoRA task type, the
loss on answer tokens, generation and the model card's pipeline tag are asked of the family
instead of assumed.

    family = family_for(recipe.model)     # CausalLM() for model.family: causal_lm
    model = family.auto_class().from_pretrained(...)
    total, count = family.answer_loss_sum(logits, labels)

    causal_lm.py  decoder-only: next-token loss, the answer follows the prompt
    encoder.py    BERT-style: a classification head, answers are label names (models.classifier)
    seq2seq.py    T5-style: the encoder reads the prompt, the decoder writes the answer
"""

from __future__ import annotations

from typing import Any, Protocol

from tunesmith.errors import ConfigError
from tunesmith.models.families.causal_lm import CausalLM
from tunesmith.models.families.encoder import Encoder
from tunesmith.models.families.seq2seq import Seq2Seq


class Family(Protocol):
    name: str
    pipeline_tag: str
    """The model card's task (`text-generation`, `text-classification`, `text2text-generation`)."""
    peft_task_type: str
    """PEFT's task type for a LoRA adapter on this family."""
    generates: bool
    """Answers are generated text (decoders, encoder-decoders), not a classifier's label."""

    def auto_class(self) -> Any:
        """The transformers Auto class that loads a model of this family."""
        ...

    def answer_loss_sum(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        """(summed cross-entropy, number of scored tokens) over the labels that are not -100."""
        ...

    def generated_tokens(self, output: Any, prompt_length: int) -> Any:
        """The tokens `generate` added, without the prompt."""
        ...


FAMILIES: dict[str, Family] = {"causal_lm": CausalLM(), "encoder": Encoder(), "seq2seq": Seq2Seq()}


def family_for(model_cfg: Any) -> Family:
    try:
        return FAMILIES[model_cfg.family]
    except KeyError:
        raise ConfigError(f"model.family {model_cfg.family!r}: not built. "
                          f"Known: {', '.join(FAMILIES)}.") from None
