"""The eval section: how base and fine-tuned models are compared."""

from __future__ import annotations

from typing import Any, Literal

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


class BenchmarksConfig(_Section):
    """lm-evaluation-harness tasks run on the base and the fine-tuned model with the same settings
    (`pip install 'tunesmith[benchmarks]'`). A list is shorthand for `tasks`."""
    tasks: list[str] = Field(default_factory=list)
    """Harness task or group names (mmlu, arc_challenge, hellaswag, gsm8k, ...) or paths of local
    task YAML files (their `task:` name is used). The hub's datasets are fetched by the harness
    unless cached; a local task reads local files."""
    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt; None: each task's own default."""
    limit: int | None = Field(None, gt=0)
    """At most this many items per task (the same items for both models); None: all."""
    batch_size: int | None = Field(None, gt=0)
    """Requests per forward pass; None: eval.batch_size."""
    apply_chat_template: bool = False
    """Wrap prompts in the model's chat template (the harness's --apply_chat_template)."""
    forgetting: bool = True
    """Measure forgetting with these tasks (pooled items) in place of the bundled 20-question probe."""


DEFAULT_RUBRIC = (
    "Grade the ANSWER to the PROMPT against the REFERENCE answer. 5: as correct and complete as the "
    "reference; 4: correct with a minor flaw; 3: partly correct; 2: mostly wrong; 1: wrong, empty "
    "or harmful.")


class JudgeConfig(_Section):
    """An LLM judge on any OpenAI-compatible endpoint: grades answers against the reference on a
    rubric, and compares base and fine-tuned answers in both orders."""
    url: str | None = None
    """Base URL of the judge's OpenAI-compatible API (e.g. http://127.0.0.1:8001/v1, or a hosted
    one); None: no judge."""
    model: str = "judge"
    """The model name sent to the endpoint."""
    api_key_env: str = "TUNESMITH_JUDGE_API_KEY"
    """The environment variable that holds the endpoint's key (never the recipe; never logged)."""
    rubric: str = DEFAULT_RUBRIC
    """What a grade means; the judge answers with one integer grade from 1 to `scale`."""
    scale: int = Field(5, ge=2, le=10)
    """The highest grade."""
    pass_grade: int = Field(4, ge=1)
    """A grade at or above this counts as acceptable: the judge's pass rate, and its yes/no that
    is compared with people's review labels (correct vs wrong/harmful)."""
    pairwise: bool = True
    """Also ask which of the base and the fine-tuned answer is better, once in each order."""
    sets: list[str] = Field(default_factory=lambda: ["test"])
    """The evaluation sets judged."""
    max_examples: int | None = Field(50, gt=0)
    """Judge at most this many examples per set (each costs 1 request, 3 with pairwise)."""
    min_kappa: float = Field(0.4, ge=-1.0, le=1.0)
    """The judge's agreement with review labels (Cohen's kappa) below this flags it as not to be
    trusted on this task (0.4: 'moderate' agreement, by Landis and Koch's scale)."""
    max_tokens: int = Field(16, gt=0)
    """The judge's answer budget (a grade, or A / B)."""
    timeout_seconds: float = Field(60.0, gt=0)
    """Per request; a judge that does not answer in time fails the evaluation with that error."""
    concurrency: int = Field(4, gt=0)
    """Requests in flight to the judge at once."""

    @model_validator(mode="after")
    def _pass_on_scale(self) -> JudgeConfig:
        if self.pass_grade > self.scale:
            raise ValueError(f"pass_grade {self.pass_grade} is above the scale's top grade {self.scale}")
        return self


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
    benchmarks: BenchmarksConfig = Field(default_factory=BenchmarksConfig)
    """The field's benchmarks (lm-evaluation-harness) beside the task, base and fine-tuned paired."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """An LLM judge for open-ended answers, measured against people's review labels."""

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        return {"tasks": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _fields_for_json_metric(self) -> EvalConfig:
        if self.metric == "json_fields" and not self.json_fields:
            raise ValueError("metric json_fields needs eval.json_fields, e.g. [category, priority]")
        return self


