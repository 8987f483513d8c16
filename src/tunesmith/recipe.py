"""The recipe: one typed home for every setting and default of a tunesmith run.

A recipe is YAML; `load_recipe("recipes/demo.yaml", ["train.lr=3e-4"])` returns a validated
`Recipe`. Every field below has a type, a default and a docstring; stage code reads these and
never invents a default of its own. Unknown keys are errors (with a "did you mean"), and all
problems are reported at once, each naming its YAML key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError

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
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class CleanConfig(_Section):
    enabled: bool = True
    """Repair mojibake (ftfy), NFC, drop control characters, tidy whitespace and chat shape."""


class FilterConfig(_Section):
    enabled: bool = True
    """Drop low-quality training rows (each filter counted, examples in the report)."""
    min_tokens: int = Field(4, ge=0)
    """Rows with fewer tokens (recipe tokenizer, whole conversation) are too short."""
    max_tokens: int | None = Field(None, gt=0)
    """Rows with more tokens are too long; None takes train.max_length."""
    max_repeated_lines: float = Field(0.5, ge=0.0, le=1.0)
    """Drop rows where more than this share of lines repeat an earlier line."""
    max_repeated_ngrams: float = Field(0.5, ge=0.0, le=1.0)
    """Drop rows where more than this share of word 3-grams repeat an earlier one."""
    min_text_fraction: float = Field(0.8, ge=0.0, le=1.0)
    """Drop rows where less than this share of characters is text (letters, digits, punctuation)."""
    copy_threshold: float = Field(0.95, gt=0.0, le=1.0)
    """Drop rows whose answer matches its prompt at this similarity or more (1 disables)."""
    min_label_count: int = Field(2, ge=1)
    """Drop rows whose label is seen fewer times than this (classification)."""


class DedupConfig(_Section):
    exact: bool = True
    """Remove exact duplicates (after normalising case and whitespace); keep the first."""
    near: bool = True
    """Remove near duplicates (MinHash LSH, verified by exact Jaccard); keep one per cluster."""
    shingle_size: int = Field(5, gt=0)
    """Words per shingle."""
    num_perm: int = Field(128, gt=0)
    """MinHash permutations."""
    bands: int = Field(16, gt=0)
    """LSH bands (bands x rows <= num_perm); 16 x 8 finds 95% of pairs at Jaccard 0.8."""
    rows: int = Field(8, gt=0)
    """Signature rows per band."""
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Jaccard similarity at or above which two rows are near duplicates."""

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands * self.rows}) exceeds num_perm ({self.num_perm})")
        return self


class LeakageConfig(_Section):
    action: Literal["drop_from_train", "drop_from_eval", "flag"] = "drop_from_train"
    """What to do with an eval row that (nearly) duplicates a train row: remove the train copy
    (eval sets stay comparable across runs), remove the eval row, or only report it."""
    ngram: int = Field(13, gt=0)
    """Word n-gram size of the contamination overlap check."""
    benchmark_files: list[str] = Field(default_factory=list)
    """Extra files (e.g. public benchmarks) that no training row may overlap."""


class PrivacyConfig(_Section):
    mode: Literal["off", "mask", "drop"] = "off"
    """E-mails, phone numbers, card numbers and IPs: leave, replace with <EMAIL> etc., or drop the row."""


class BalanceConfig(_Section):
    by: str = "auto"
    """Stratum for splits and balancing: auto, none, label, answer, or meta.<key>."""
    strategy: Literal["none", "cap", "oversample", "class_weights"] = "none"
    """Rebalance training rows: cap per stratum, oversample small strata, or report class weights."""
    cap: int | None = Field(None, gt=0)
    """For strategy cap: the most rows kept per stratum."""

    @field_validator("by")
    @classmethod
    def _known_stratum(cls, value: str) -> str:
        if value not in ("auto", "none", "label", "answer") and not value.startswith("meta."):
            raise ValueError("expected auto, none, label, answer or meta.<key>")
        return value

    @model_validator(mode="after")
    def _cap_given(self) -> BalanceConfig:
        if self.strategy == "cap" and self.cap is None:
            raise ValueError("strategy cap needs balance.cap (rows per stratum)")
        return self


class AugmentConfig(_Section):
    methods: list[Literal["random_deletion", "random_swap", "template"]] = Field(default_factory=list)
    """Augmentations of the last user turn, added to train only; empty = off."""
    copies: int = Field(1, gt=0)
    """Augmented rows per training row and method."""
    deletion_p: float = Field(0.1, gt=0.0, lt=1.0)
    """random_deletion: chance of dropping each word."""
    swaps: int = Field(1, gt=0)
    """random_swap: word pairs swapped."""
    templates: list[str] = Field(default_factory=list)
    """template: rewrites of the prompt, each with a {text} slot, e.g. "Customer wrote: {text}"."""

    @model_validator(mode="after")
    def _templates_given(self) -> AugmentConfig:
        if "template" in self.methods and not all("{text}" in t for t in self.templates or [""]):
            raise ValueError("method template needs augment.templates, each with a {text} slot")
        return self


def _terms_given(lexicon: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """A group with no (or an empty) term would match every text: refuse it."""
    for dimension, groups in lexicon.items():
        for group, terms in groups.items():
            if not terms or any(not str(t).strip() for t in terms):
                raise ValueError(f"{dimension}.{group}: give each group one or more non-empty terms")
    return lexicon


class DataBiasConfig(_Section):
    audit: bool = True
    """Count the lexicon's demographic groups in the training prompts per answer class and test
    their independence (data/bias.py); flagged in the data report and the model card."""
    lexicon: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    """Extra or replacement dimensions, {dimension: {group: [aligned terms]}}, added to the bundled
    lexicon and to eval.bias.lexicon's."""
    alpha: float = Field(0.01, gt=0.0, lt=1.0)
    """A group x class table is flagged when its independence test has p below this ..."""
    min_effect: float = Field(0.1, ge=0.0, le=1.0)
    """... and its Cramér's V is at least this (0.1: a small effect, by Cohen's convention)."""
    mitigate: list[Literal["counterfactual", "reweight"]] = Field(default_factory=list)
    """On the training split: counterfactual copies with the group terms swapped, and/or loss
    weights that make group and class independent (reweight: decoder SFT on train.backend
    tunesmith)."""
    dimensions: list[str] = Field(default_factory=list)
    """The dimensions to mitigate; empty = the ones the audit flags."""

    @field_validator("lexicon")
    @classmethod
    def _lexicon_terms(cls, value: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        return _terms_given(value)


class DataConfig(_Section):
    train: list[str] = Field(default_factory=list)
    """Training file(s) or local HF `datasets` dirs: JSONL, JSON array, CSV, Parquet."""
    val: str | None = None
    """Validation file; when absent, `val_fraction` of train is held out."""
    test: str | None = None
    """In-domain test file; when absent, `test_fraction` of train is held out."""
    eval_sets: dict[str, str] = Field(default_factory=dict)
    """Extra named evaluation files, e.g. `{ood: data/other_product.jsonl}` (out-of-domain)."""
    format: FormatName = "auto"
    """Input format; `auto` detects it from the rows' keys."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename your columns to the format's names: `{instruction: question, output: answer}`."""
    on_invalid: Literal["error", "skip"] = "error"
    """What to do with a row that fails validation: stop with its location, or skip and count it."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of train held out for validation when `val` is not given."""
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of train held out for testing when `test` is not given."""
    system_prompt: str | None = None
    """System message added to conversations that have none (training and evaluation alike)."""
    max_rows: int | None = Field(None, gt=0)
    """Read at most this many rows per file (quick experiments)."""
    encoding: str = "auto"
    """Text encoding of the files; `auto` reads UTF-8 and UTF-16/32 (with a BOM) and names the
    likely encoding of anything else. Set e.g. `cp1252` for Windows exports."""
    max_row_chars: int = Field(1_000_000, gt=0)
    """A row longer than this (characters of JSON / CSV) is invalid: one runaway row would take
    gigabytes in cleaning and tokenizing."""
    max_depth: int = Field(50, gt=1)
    """A row nested deeper than this (lists in objects in lists ...) is invalid."""
    text_separator: str | None = None
    """Raw text files (.txt, .md): None reads each file as one document; a separator splits it into
    documents (`"\\n"`: one a line, as LLaMA-Factory's wiki_demo.txt; `"\\n\\n"`: paragraphs). The
    escapes \\n, \\t and \\r mean what they say also where YAML keeps them as written (single quotes,
    or `data.text_separator='\\n'` on the command line)."""
    seed: int = 42
    """Seed of the train/val/test split: the same recipe and seed give the same split."""
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Text and chat-shape normalisation.")
    filters: FilterConfig = Field(default_factory=FilterConfig,
                                  description="Quality filters on training rows.")
    dedup: DedupConfig = Field(default_factory=DedupConfig,
                               description="Exact and near-duplicate removal in train.")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig,
                                   description="Train/eval leakage and benchmark contamination checks.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Personal-data scrubbing.")
    balance: BalanceConfig = Field(default_factory=BalanceConfig,
                                   description="Strata for the split, and rebalancing of train.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="Opt-in augmentation of the training split.")
    bias: DataBiasConfig = Field(default_factory=DataBiasConfig,
                                 description="Audit of demographic groups per answer class, and mitigation.")

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("text_separator")
    @classmethod
    def _escapes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")
        if not value:
            raise ValueError("an empty separator splits nothing; leave it unset to read one document a file")
        return value

    @field_validator("eval_sets")
    @classmethod
    def _names_free(cls, sets: dict[str, str]) -> dict[str, str]:
        taken = sorted(set(sets) & {"train", "val", "test"})
        if taken:
            raise ValueError(f"{taken[0]} is taken by a split; give the eval set another name")
        return sets

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        held_out = (0 if self.val else self.val_fraction) + (0 if self.test else self.test_fraction)
        if held_out >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class ModelConfig(_Section):
    name: str = "embedded:smollm2-135m-instruct"
    """Hub id, local directory (safetensors), or an embedded model that ships offline:
    `embedded:smollm2-135m-instruct` (decoder) or `embedded:all-minilm-l6-v2` (encoder)."""
    family: Literal["causal_lm", "encoder", "seq2seq"] = "causal_lm"
    """Model family: `causal_lm` (decoder, GPT-style: generation), `encoder` (BERT-style: a
    classification head; the label is a classification record's, or a chat answer's
    `eval.label_field`) or `seq2seq` (encoder-decoder, T5-style: text to text)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; None takes the default branch."""
    trust_remote_code: bool = False
    """Run Python code that ships with the model. Off unless you trust its source."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to run: `auto` takes CUDA, then Apple MPS, then the CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype: `auto` is bf16 on a GPU that computes bf16 natively (Ampere and later),
    float32 otherwise (the CPU; T4 / V100, which train in fp16 autocast over fp32 weights)."""
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    """Attention kernels: `auto` is flash-attention-2 on CUDA when the flash_attn package is
    installed (packed rows then run its varlen kernel), else PyTorch's SDPA."""
    chat_template: str | None = None
    """Jinja chat template overriding the tokenizer's (needed if the tokenizer has none), or
    `chatml` for the ChatML template (`<|im_start|>role ... <|im_end|>`)."""
    intended_use: Literal["unspecified", "commercial", "research"] = "unspecified"
    """How the fine-tuned model will be used. `commercial` stops a run whose base model's license
    forbids commercial use (and warns on conditions); the model card records the lineage."""
    accept_license: str | None = None
    """A license id to accept despite a conflict with intended_use (a separate agreement)."""


class LoraConfig(_Section):
    r: int = Field(16, gt=0)
    """LoRA rank."""
    alpha: int = Field(32, gt=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch's input. Off by default (as in PEFT and TRL): on a CPU its random
    masks, one per adapted layer per step, cost 35% of SmolLM2's step time (bench/train_throughput.py,
    README); 0.05-0.1 regularises small datasets."""
    targets: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or `all-linear` for every linear layer but the output head."""


class EarlyStoppingConfig(_Section):
    patience: int | None = Field(None, gt=0)
    """Stop after this many validation checks without improvement; None turns it off."""
    min_delta: float = Field(0.0, ge=0.0)
    """An improvement smaller than this does not count."""


class TrainConfig(_Section):
    method: Literal["lora", "qlora", "full", "dpo", "kto"] = "lora"
    """`lora`: train small adapter matrices on demonstrations (default); `qlora`: the same adapters
    on a base stored in 4-bit NF4 with double quantization (bitsandbytes; about a quarter of the
    base's bf16 memory), dequantized to merge, evaluate and serve; `full`: update every weight;
    `dpo` / `kto`: a LoRA adapter trained on preference data with TRL's DPO or KTO trainer (DPO:
    chosen/rejected pairs; KTO: answers labelled desirable or not, pairs split in two)."""
    beta: float = Field(0.1, gt=0)
    """dpo / kto: how far the tuned model may move from the reference (higher: stays closer)."""
    init_adapter: str | None = None
    """Continue training this LoRA adapter (an earlier run's model/, e.g. runs/demo/model) instead
    of a fresh one: the loop's retraining starts from the model that was served. Its base must be
    model.name. With dpo / kto the reference stays the base model (adapter switched off)."""
    optimizer: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    """Optimizer."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate (2e-4 suits LoRA; use ~1e-5 for full fine-tuning)."""
    batch_size: int = Field(8, gt=0)
    """Examples per device per step."""
    grad_accum: int = Field(1, gt=0)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (ignored when `max_steps` is set)."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps instead of counting epochs."""
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Share of steps spent warming the learning rate up from zero."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Decoupled weight decay (L2 for SGD/RMSprop)."""
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warm-up."""
    max_length: int = Field(1024, gt=8)
    """Truncate tokenized examples to this many tokens."""
    loss_on: Literal["assistant", "all"] = "assistant"
    """Compute the loss on assistant turns only (default) or on every token."""
    reasoning: Literal["train", "mask", "drop"] = "train"
    """What the model learns of assistant turns' reasoning (reasoning parts, reasoning_content,
    <think> blocks): `train` puts it in the loss, so the model learns to think before it answers (why
    data carries traces: distilling a reasoning model); `mask` keeps it in the context but out of the
    loss (the answers learnt given the thinking); `drop` removes it (a model that answers directly).
    Templates that know reasoning (Qwen3's `reasoning_content`) render it; others get
    `<think>...</think>` before the answer."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """LoRA settings (used when method is `lora`)."""
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    """`auto` is bf16 autocast where the hardware computes bf16: CUDA (Ampere+) and CPUs with AMX or
    AVX512-BF16 (measured 1.60x fp32 for SmolLM2 LoRA); fp32 on other CPUs, where emulated bf16
    measured 0.49x (AVX-512) and slower still on AVX2."""
    group_by_length: bool = True
    """Batch examples of similar length together: less padding, faster steps (order stays seeded)."""
    gradient_checkpointing: bool = False
    """Recompute activations to save memory; off because it costs throughput when memory is ample."""
    packing: bool | Literal["auto"] = "auto"
    """Padding-free packing: training rows concatenated up to `max_length`, positions restarting
    per row and attention kept inside each row (flash-attention-2's varlen kernel on CUDA, a block
    mask elsewhere), loss on the answer tokens only, exactly as unpacked. `auto` packs where it
    pays: CUDA with flash-attention-2 (bench/train_throughput.py measured it slower on the CPU,
    where length grouping already leaves little padding)."""
    fit: Literal["check", "auto", "off"] = "check"
    """Before the weights are loaded (or downloaded), the training step's peak memory is estimated
    (models.memory) against the device's free memory. `check` refuses a recipe that will not fit,
    with the numbers and the settings that fit; `auto` applies the first of them and records it in
    the run's recipe; `off` skips the check."""
    backend: Literal["tunesmith", "trl"] = "tunesmith"
    """Decoder SFT engine: `tunesmith` (transformers' Trainer with bf16 frozen weights, logits at
    answer positions only, no attention mask, compiled layers: bench/train_throughput.py) or `trl`
    (TRL's SFTTrainer as-is). Preference methods always use TRL; encoders and encoder-decoders
    transformers' Trainer."""
    compile: bool | Literal["auto"] = "auto"
    """`torch.compile` the decoder layers (tunesmith backend): true, false, or auto (when the run
    trains enough tokens to earn back the compile time, and a C++ compiler is present)."""
    save_steps: int = Field(50, gt=0)
    """Write a resumable checkpoint every N optimizer steps."""
    save_total_limit: int = Field(2, gt=0)
    """Keep only the newest N checkpoints."""
    logging_steps: int = Field(5, gt=0)
    """Log loss, learning rate and throughput every N steps."""
    eval_steps: int | None = Field(None, gt=0)
    """Compute validation loss every N steps; None evaluates once per epoch."""
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    """Stop when validation loss stops improving (needs validation data)."""
    max_val_train_gap: float | None = Field(0.5, gt=0.0)
    """Warn (logged, in the report) when validation loss exceeds train loss by more than this."""
    l1: float = Field(0.0, ge=0.0)
    """L1 penalty: coefficient x sum of |w| over the trainable weights, added to the loss."""
    model_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Dropout inside the model (attention/hidden, where its config has such fields); None keeps it."""
    merge: bool = False
    """Also write LoRA-merged full weights to `model/merged/` (for serving without PEFT)."""
    seed: int = 42
    """Seed for weight init of the adapter and data order."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML reads a bare `no` as false: `train.mixed_precision=no` means "no"."""
        return "no" if value is False else value

    @property
    def adapter(self) -> Literal["lora", "full"]:
        """What the run's model directory holds: a LoRA adapter (lora, qlora, dpo, kto) or full
        weights."""
        return "full" if self.method == "full" else "lora"

    @property
    def preference(self) -> bool:
        return self.method in ("dpo", "kto")


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


class ParamSpace(_Section):
    type: Literal["float", "int", "categorical"]
    """Kind of the parameter."""
    low: float | None = None
    """Lower bound (float, int)."""
    high: float | None = None
    """Upper bound (float, int)."""
    log: bool = False
    """Sample on a log scale (float, int), e.g. for learning rates."""
    choices: list[Any] | None = None
    """Values of a categorical parameter."""
    grid: list[Any] | None = None
    """Values a float/int parameter takes in a grid search (else the grid uses low and high)."""

    @model_validator(mode="after")
    def _complete(self) -> ParamSpace:
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical parameter needs choices")
        if self.type != "categorical" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"a {self.type} parameter needs low <= high")
        if self.log and self.type != "categorical" and (self.low or 0) <= 0:
            raise ValueError("log scale needs low > 0")
        return self

    def grid_values(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices or [])
        return list(self.grid) if self.grid else [self.low, self.high]


class TuneConfig(_Section):
    strategy: Literal["grid", "random", "bayesian"] = "bayesian"
    """grid: every combination; random; bayesian: multivariate TPE."""
    space: dict[str, ParamSpace] = Field(default_factory=dict)
    """Recipe keys to search, e.g. `train.lr: {type: float, low: 1e-5, high: 1e-3, log: true}`."""
    trials: int | None = Field(8, gt=0)
    """Trials this worker runs (a grid stops when it is exhausted); None: until the timeout or the
    step budget."""
    timeout_minutes: float | None = Field(None, gt=0)
    """Wall-time budget of this worker."""
    max_training_steps: int | None = Field(None, gt=0)
    """Compute budget of the study, in optimizer steps summed over all trials (pruned ones count
    the steps they ran): a new trial starts only while a full-length trial still fits."""
    objective: Literal["eval_loss"] = "eval_loss"
    """What a trial is scored by: the validation loss (answer tokens), reported during training."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether a lower or higher objective is better."""
    pruner: Literal["none", "median", "hyperband"] = "median"
    """Stop unpromising trials early on their intermediate validation loss."""
    pruner_startup_trials: int = Field(2, ge=0)
    """median: trials that run to the end before the pruner starts comparing."""
    hyperband_reduction_factor: int = Field(3, ge=2)
    """hyperband: 1 / this share of trials is promoted to the next rung."""
    eval_steps: int = Field(10, gt=0)
    """Trials compute validation loss every N steps (what pruning decides on), unless
    train.eval_steps is set."""
    startup_trials: int = Field(3, ge=1)
    """Random trials before TPE starts modelling the space (bayesian)."""
    cv_folds: int = Field(0, ge=0)
    """k >= 2: score each trial as mean +- std over k folds of train; then retrain the best on all of
    train and evaluate it once on test."""
    storage: str | None = None
    """Optuna storage URL; None keeps the study in SQLite in the run dir. postgresql://... lets many
    workers on many machines share one study."""
    study: str | None = None
    """Study name (shared by workers); defaults to the recipe name."""
    devices: Literal["auto"] | list[str] = "auto"
    """Where `tunesmith tune --processes N` runs its workers, one device each, round robin
    (cuda:0, cuda:1, ... or cpu); auto: every visible GPU, or the CPU."""
    heartbeat_seconds: int = Field(30, gt=0)
    """Workers beat this often; a trial whose worker stops beating is failed and retried."""
    retries: int = Field(1, ge=0)
    """How many times a failed (e.g. crashed worker's) trial is retried."""
    seed: int = 42
    """Sampler seed."""

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        for key in space:
            try:
                recipe_from_dict(apply_overrides({}, [f"{key}=0"]))
            except ConfigError as error:
                if "unknown key" in str(error):
                    raise ValueError(f"{key} is not a recipe key") from None
        return space


class OutputConfig(_Section):
    dir: str = "runs"
    """Parent directory of run directories."""
    run_name: str | None = None
    """Run directory name; defaults to the recipe's `name`."""


class FallbackConfig(_Section):
    kind: Literal["none", "base", "run", "fixed"] = "none"
    """Who answers when the primary model fails: `base` (the base model, LoRA runs: the adapter
    switched off), `run` (another run directory, `run`), `fixed` (the text `answer`)."""
    run: str | None = None
    """The fallback run directory (kind: run)."""
    answer: str | None = None
    """The fixed answer (kind: fixed), e.g. {"category": "other", "priority": "medium"}."""
    on_invalid_output: bool = False
    """Also fall back when the primary's answer fails serve.output_check."""

    @model_validator(mode="after")
    def _needs_its_source(self) -> FallbackConfig:
        if self.kind == "run" and not self.run:
            raise ValueError("fallback kind run needs serve.fallback.run: a run directory")
        if self.kind == "fixed" and self.answer is None:
            raise ValueError("fallback kind fixed needs serve.fallback.answer")
        return self


class ScopeGuardConfig(_Section):
    enabled: bool = False
    """Send prompts far from the training prompts (drift embedding) to the fallback, or refuse them."""
    max_false_refusals: float = Field(0.02, gt=0.0, lt=1.0)
    """The threshold is set at start so that at most this share of the validation prompts is beyond it."""
    neighbours: int = Field(5, gt=0)
    """A prompt's distance: 1 - mean cosine similarity to this many nearest training prompts."""
    message: str = ("This assistant only answers requests like the ones it was trained for ({description}); "
                    "this one looks different. Rephrase it, or contact a person.")
    """The refusal (422 out_of_scope) when there is no fallback; {description} is the recipe's."""


class RateLimitConfig(_Section):
    requests_per_minute: float | None = Field(None, gt=0)
    """Requests a minute per API key (per client address without keys); none = no limit."""
    burst: int = Field(10, gt=0)
    """Requests a key may make at once after being idle (the bucket's size)."""


class GuardsConfig(_Section):
    scope: ScopeGuardConfig = Field(default_factory=ScopeGuardConfig,
                                    description="Prompts far from the training prompts: fallback or refusal.")
    output_filter: bool = False
    """Mask personal data (e-mail, phone, card numbers, IPs) in answers with the data stage's rules."""
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig,
                                        description="Requests a minute per API key (429 beyond).")


class UpstreamConfig(_Section):
    url: str | None = None
    """The OpenAI-compatible server that generates (serve.engine upstream), e.g.
    http://127.0.0.1:8001: vLLM, TGI, SGLang, llama.cpp's server, or another tunesmith serve."""
    model: str | None = None
    """The model name the upstream serves the fine-tuned model under (vLLM: the LoRA module's
    name); default the run's name."""
    base_model: str | None = None
    """The name it serves the base under, for fallback kind base (vLLM: the base's --served-model-name)."""
    api_key_env: str = "TUNESMITH_UPSTREAM_API_KEY"
    """The environment variable holding the upstream's API key (never in the recipe)."""
    timeout_seconds: float = Field(120.0, gt=0)
    """Longest wait for the upstream's next byte; serve.timeout_seconds still bounds a request."""
    concurrency: int = Field(64, gt=0)
    """Requests in flight to the upstream at most (it batches them itself); more wait, then 429."""


class VLLMConfig(_Section):
    """serve.engine vllm: tunesmith starts vLLM's OpenAI server with the run's adapter as a LoRA
    module on its base, and serves in front of it (see serve/engines.py)."""
    port: int = Field(8001, gt=0, lt=65536)
    """vLLM's port, on 127.0.0.1 (only tunesmith talks to it)."""
    tensor_parallel_size: int = Field(1, gt=0)
    """GPUs one model is split over (vLLM's --tensor-parallel-size)."""
    max_model_len: int | None = Field(None, gt=0)
    """Longest prompt + answer (vLLM's --max-model-len); default the model's context length."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """The share of each GPU's memory vLLM may take (its --gpu-memory-utilization)."""
    adapters: list[str] = Field(default_factory=list)
    """Other LoRA runs on the same base, served by the same vLLM (multi-LoRA), each under its
    run directory's name."""
    max_lora_rank: int | None = Field(None, gt=0)
    """vLLM's --max-lora-rank; default the largest train.lora.r among the adapters."""
    extra_args: list[str] = Field(default_factory=list)
    """More vLLM command-line arguments, passed as they are (e.g. [--enable-prefix-caching])."""
    startup_timeout_seconds: float = Field(900.0, gt=0)
    """How long vLLM may take to load before serving gives up."""


class ServeConfig(_Section):
    engine: Literal["builtin", "upstream", "vllm"] = "builtin"
    """Who generates: `builtin` (transformers, in this process), `upstream` (an OpenAI-compatible
    server at serve.upstream.url), `vllm` (vLLM started by tunesmith, serve.vllm). tunesmith's
    guards, cache, fallback, metrics, drift, feedback, request log and canary work with each."""
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    """serve.engine upstream: the server that generates, and the names it serves the models under."""
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    """serve.engine vllm: how tunesmith starts vLLM (port, parallelism, adapters, extra arguments)."""
    max_batch_size: int = Field(16, gt=0)
    """Requests generated together (dynamic batching; 16 measured ~6x one at a time on the CPU)."""
    max_wait_ms: float = Field(50.0, ge=0)
    """A batch takes new requests until this long passes without one (at most max_window_ms).
    Clients answered together come back close together, but each request is parsed and its
    prompt rendered in turn: a fixed window from the first arrival split the batches of 16
    clients (measured: 16, 16, 11, 7, 14), a 20 ms gap still split one batch in ten."""
    max_window_ms: float = Field(200.0, ge=0)
    """The longest a batch waits for company after it opened, however steadily requests arrive."""
    queue_size: int = Field(64, gt=0)
    """Requests waiting for the model at most; more get 429 with Retry-After."""
    timeout_seconds: float = Field(60.0, gt=0)
    """A request's deadline (queue + generation); then the fallback answers, or 504."""
    max_tokens: int = Field(256, gt=0)
    """max_tokens of a request that does not say (capped by the context length)."""
    max_body_bytes: int = Field(1_000_000, gt=0)
    """Larger request bodies get 413."""
    cache_size: int = Field(1024, ge=0)
    """Deterministic answers (temperature 0 or a seed) kept for repeats; 0 turns the cache off."""
    cache_ttl_seconds: float = Field(600.0, gt=0)
    """How long a cached answer is served."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto` generates as evaluation did (eval.precision), so the served model answers as it scored.
    `bf16` on a CPU with AMX / AVX512-BF16: bf16 weights, 2.2-2.7x the fp32 throughput (bench/serve.py)."""
    prefix_cache: bool = True
    """Compute the prompt prefix a batch shares (system prompt, template) once and keep it."""
    output_check: Literal["none", "json", "json_fields"] = "none"
    """Check each chat answer: `json` parses as a JSON object, `json_fields` also has eval.json_fields."""
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    """Who answers when the model fails (raises, times out, or fails the output check)."""
    log_prompts: bool = False
    """Write prompts and answers into the request log lines (off: ids, sizes and timings only)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed to call the API (CORS); none by default."""
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    """Safeguards against misuse: scope guard, output filter, per-key rate limits (serve/guards.py)."""

    @model_validator(mode="after")
    def _upstream_has_an_address(self) -> ServeConfig:
        if self.engine == "upstream" and not self.upstream.url:
            raise ValueError("serve.engine upstream needs serve.upstream.url: the OpenAI-compatible server's "
                             "address, e.g. http://127.0.0.1:8001")
        if self.upstream.url and not self.upstream.url.startswith(("http://", "https://")):
            raise ValueError(f"serve.upstream.url {self.upstream.url}: give an http:// or https:// address")
        return self


class AlertRule(_Section):
    metric: Literal["p95_latency_ms", "error_rate", "drift", "negative_feedback_rate", "canary_drop"]
    """What is watched, per window: p95 latency, the share of 5xx answers, drift (the share of
    drift tests that reject), the share of -1 ratings, the canary's drop below the evaluation's CI."""
    above: float
    """The rule fires when the metric goes above this (for `windows` windows in a row)."""
    clear_below: float | None = None
    """It clears only when the metric falls below this (hysteresis; default 80% of `above`)."""
    windows: int = Field(1, gt=0)
    """Windows in a row above `above` before it fires (1: at once)."""

    @property
    def clear(self) -> float:
        return self.above * 0.8 if self.clear_below is None else self.clear_below


def _default_alerts() -> list[AlertRule]:
    return [AlertRule(metric="p95_latency_ms", above=5000), AlertRule(metric="error_rate", above=0.05),
            AlertRule(metric="drift", above=0.5), AlertRule(metric="negative_feedback_rate", above=0.3),
            AlertRule(metric="canary_drop", above=0.0)]


class MonitorConfig(_Section):
    enabled: bool = True
    """Record requests, feedback, drift and alerts while serving."""
    store: str | None = None
    """Where requests, feedback and alerts go: None is SQLite in the run directory
    (monitor/requests.db); a postgresql:// URL shares one store between replicas."""
    store_prompts: bool = True
    """Keep prompts and answers in the store (feedback export needs them); off: sizes and timings only."""
    scrub_pii: bool = False
    """Replace e-mails, phone and card numbers, IPs in stored prompts and answers (data stage's rules)."""
    retention_days: float = Field(30.0, gt=0)
    """Stored requests older than this are deleted (with their feedback)."""
    window_size: int = Field(50, ge=5)
    """Requests per monitoring window: drift, latency, errors and feedback are judged per window."""
    drift_p_value: float = Field(0.01, gt=0, lt=1)
    """A drift test (KS on lengths, chi-square on labels, MMD on embeddings) rejects below this p-value."""
    psi_threshold: float = Field(0.25, gt=0)
    """PSI above this counts as drift (0.1-0.25 moderate, > 0.25 large, the usual reading)."""
    oov_ratio: float = Field(2.0, gt=1)
    """Drift when a window's out-of-vocabulary rate is this many times the reference's."""
    embeddings: bool = True
    """Compare prompt embeddings (the embedded all-MiniLM-L6-v2) with an MMD permutation test."""
    reference_size: int = Field(500, gt=10)
    """Training prompts sampled for the reference statistics (saved at train time)."""
    canary_every_seconds: float = Field(0.0, ge=0)
    """Replay the run's test examples through the live model this often (0: off)."""
    canary_size: int = Field(32, gt=0)
    """Test examples per canary replay."""
    alerts: list[AlertRule] = Field(default_factory=_default_alerts)
    """Alert rules, judged on every window."""
    webhook_env: str = "TUNESMITH_ALERT_WEBHOOK"
    """Environment variable holding a URL that alerts are POSTed to (unset: no webhook)."""


class Recipe(_Section):
    name: str = "run"
    """Name of the experiment (and default run directory name)."""
    description: str = ""
    """Free text: what this run is for. Carried to the model card."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Where the data is and how it is checked, cleaned and split."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model and where it runs."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """How it is fine-tuned."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """How base and fine-tuned models are compared."""
    tune: TuneConfig = Field(default_factory=TuneConfig)
    """Hyperparameter search (`tunesmith tune`)."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Where the run directory goes."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """How `tunesmith serve` answers: batching, limits, cache, output check, fallback."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """What the server watches: request log, feedback, drift, alerts."""

    @model_validator(mode="after")
    def _family_trains_so(self) -> Recipe:
        if self.model.family != "causal_lm" and self.train.method == "qlora":
            raise ValueError(f"train.method qlora is built for decoders (model.family: causal_lm); a "
                             f"{self.model.family} model trains with train.method lora or full")
        if self.train.packing is True and (self.model.family != "causal_lm" or self.train.preference):
            raise ValueError("train.packing packs decoder demonstrations (train.method lora, qlora or "
                             "full with model.family causal_lm); set train.packing: auto or false")
        if self.model.family != "causal_lm" and self.train.preference:
            raise ValueError(f"train.method {self.train.method} is built for decoders (model.family: "
                             f"causal_lm); a {self.model.family} model trains with train.method lora or "
                             "full")
        return self

    @model_validator(mode="after")
    def _reweight_applies(self) -> Recipe:
        if "reweight" in self.data.bias.mitigate and (
                self.train.preference or self.model.family != "causal_lm" or self.train.backend == "trl"):
            raise ValueError("data.bias.mitigate: reweight gives rows loss weights, which only decoder SFT "
                             "on train.backend: tunesmith applies; use mitigate: [counterfactual] here.")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / (self.output.run_name or self.name)

    @property
    def filters(self) -> FilterConfig:
        """data.filters with its defaults resolved: max_tokens None is train.max_length (a row
        longer than training sees would be cut, so it counts as too long)."""
        if self.data.filters.max_tokens is not None:
            return self.data.filters
        return self.data.filters.model_copy(update={"max_tokens": self.train.max_length})


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
YAML_HINT = "Check the indentation there, and quote values that contain ': ' or start with * & @ [ {."


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 0.0003). Values are parsed as YAML scalars; a value
    YAML cannot read (`*x`, `@org/model`, `[1e-4`) is taken as the plain string it is."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: expected key.sub=value, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                key = ".".join(path[:path.index(part) + 1])
                raise ConfigError(f"override {text!r}: {part} is not a section (it holds {child!r}); "
                                  f"set the key itself, e.g. {key}=VALUE")
            node = child
        node[path[-1]] = value
    return raw


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for "did you mean")."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _blame(key: str, source: str, overrides: list[str]) -> str:
    """Who set `key`: the last override that set it or a section above it, else the recipe file."""
    for text in reversed(overrides):
        name = text.partition("=")[0].strip()
        if key == name or key.startswith(name + ".") or name.startswith(key + "."):
            return f"override {text}"
    return source


def format_validation_error(error: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not str(p).startswith("function-"))
        key = ".".join(str(p) for p in loc) or "(top level)"
        origin = _blame(key, source, overrides or [])
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(Recipe, loc), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            lines.append(f"{origin}: {key}: unknown key{hint}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            given = item.get("input")  # a whole section (a cross-key check) would bury the message
            lines.append(f"{origin}: {key}: {msg}" + ("" if isinstance(given, dict) else f" (got {given!r})"))
    return "\n".join(lines)


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe",
                     overrides: list[str] | None = None) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, overrides)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML lets the last one win)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one section (first on line {seen[key] + 1}); "
                "keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    """A YAML file, with errors as one located line: `path:line:column: what. fix`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Save the recipe as UTF-8.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(error.problem or error.context or "").split())
        if "appears twice" in problem:
            raise ConfigError(f"{where}: {problem}.") from None
        raise ConfigError(f"{where}: not valid YAML ({problem}). {YAML_HINT}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())}). {YAML_HINT}") from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "recipe not found"
            raise ConfigError(f"{path}: {what}. Pass the path of a YAML recipe, e.g. recipes/demo.yaml.")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a YAML mapping (key: value), not a "
                              f"{type(raw).__name__}. Start from recipes/demo.yaml.")
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, source, overrides)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default filled in."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
