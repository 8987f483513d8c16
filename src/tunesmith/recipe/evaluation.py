"""The eval section: how base and fine-tuned models are compared."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunesmith.recipe.base import _Section, _terms_given


class BiasConfig(_Section):
    enabled: bool = True
    """Run counterfactual bias probes on the test set (terms from the bundled lexicon)."""
    max_prompts: int = Field(24, gt=0)
    """Probe at most this many prompts per dimension (each is answered once per group)."""
    max_gap: float = Field(0.1, ge=0.0, le=1.0)
    """Largest allowed difference of the metric between groups of a dimension."""
    on_gap: Literal["warn", "fail"] = "warn"
    """When a gap exceeds max_gap: warn in the report, or fail the run (exit code 1)."""
    lexicon: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    """Extra or replacement dimensions: {dimension: {group: [aligned terms]}}."""

    @field_validator("lexicon")
    @classmethod
    def _lexicon_terms(cls, value: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        return _terms_given(value)


class EvalConfig(_Section):
    metric: Literal["exact_match", "json_fields", "token_f1", "rouge_l", "json_valid", "none"] = (
        "exact_match")
    """Primary task metric on generations (tables, paired tests, bias gaps). BLEU, chrF, ROUGE-L,
    token F1 and JSON validity are always reported beside it."""
    json_fields: list[str] = Field(default_factory=list)
    """For `json_fields`: the keys compared; a prediction scores only if every key matches."""
    label_field: str | None = None
    """JSON field that holds a label (e.g. category) for accuracy/P/R/F1 and a confusion matrix;
    classification data uses the whole answer as the label."""
    baseline: bool = True
    """Also score the base model on the same examples with the same prompt and decoding."""
    max_new_tokens: int = Field(64, gt=0)
    """Generation budget per example (greedy decoding)."""
    batch_size: int = Field(16, gt=0)
    """Prompts per generation batch (batched is ~6x faster than one at a time on the CPU)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Generation precision. `auto`: fp32 on the CPU, where bf16 answers depend on the CPU's
    instruction set (the demo's base probe scored 75% with AMX and 70% with AVX2 in bf16, 70% with
    identical answers on AMX, AVX-512 and AVX2 in fp32), so a seed gives the same table on any
    machine; bf16 on a GPU that supports it."""
    max_examples: int | None = Field(None, gt=0)
    """Score at most this many examples per set (quick checks)."""
    forgetting_probe: bool = True
    """Score both models on a bundled set of 20 general questions, to catch forgetting."""
    worst_examples: int = Field(5, ge=0)
    """How many lowest-scoring examples per set to list for error analysis."""
    knn_neighbours: int = Field(5, gt=0)
    """An encoder's baseline: a vote of this many nearest training examples, by the frozen
    encoder's embeddings (its new classification head starts random, so is no baseline)."""
    bias: BiasConfig = Field(default_factory=BiasConfig)
    """Counterfactual bias probes and their threshold."""

    @model_validator(mode="after")
    def _fields_for_json_metric(self) -> EvalConfig:
        if self.metric == "json_fields" and not self.json_fields:
            raise ValueError("metric json_fields needs eval.json_fields, e.g. [category, priority]")
        return self


