"""The shapes of the JSON files stages write into a run directory: one schema per file, used by
its writer and by every reader (`RunDir` owns where each file lives).

    data/report.json        DataReport       (data stage)
    train/summary.json      TrainSummary     (train stage)
    train/log.jsonl         LogEntry rows    (train stage, read by evaluate for loss curves)
    eval/summary.json       EvalSummary      (evaluate stage; read by report, compare, tune)
    eval/predictions.jsonl  Prediction rows  (evaluate stage; read by compare)
    tune/summary.json       TuneSummary      (tune stage)
    manifest.json           Manifest         (rundir)

    summary = load(EvalSummary, run_dir.eval_summary)   # validated; a located error if not
    save(summary, run_dir.eval_summary)

Unknown keys are ignored on read (a newer writer's extra field does not break an older reader);
a missing or mistyped field is a clear error naming the file and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.errors import ConfigError
from tunesmith.explain import validation_problem, words
from tunesmith.files import write_text


class Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


# --- evaluation ------------------------------------------------------------------------------

class Interval(Schema):
    """A value with its bootstrap 95% CI."""
    value: float
    ci_low: float
    ci_high: float


class McNemar(Schema):
    base_only_right: int
    tuned_only_right: int
    p_value: float


class Paired(Schema):
    """Fine-tuned minus base (or run B minus run A) over the same examples."""
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    mcnemar: McNemar | None = None


class PRF(Schema):
    precision: float
    recall: float
    f1: float


class Confusion(Schema):
    labels: list[str]
    matrix: list[list[int]]


class LabelMetrics(Schema):
    field: str | None
    accuracy: Interval
    labels: list[str]
    macro: PRF
    micro: PRF
    confusion: Confusion


class ModelScores(Schema):
    """One model's answers to one set, scored."""
    value: float | None = None
    """The primary metric (eval.metric); None when eval.metric is none."""
    ci: tuple[float, float] | None = None
    metrics: dict[str, Interval] = Field(default_factory=dict)
    labels: LabelMetrics | None = None


class WorstExample(Schema):
    set: str
    index: int
    prompt: str
    reference: str
    finetuned_prediction: str
    finetuned_score: float | None
    finetuned_error: str


class TopConfusion(Schema):
    expected: str
    predicted: str
    count: int


class Slice(Schema):
    examples: int
    value: float


class ReasoningStats(Schema):
    """Answers that opened with a <think> block (scored on the text after it)."""
    answers_with_reasoning: int
    mean_reasoning_tokens: float
    """Mean tokens of reasoning over the answers that have some."""
    unfinished: int = 0
    """Answers cut off inside their reasoning (no answer given: max_new_tokens too low)."""


class SetResult(Schema):
    examples: int
    finetuned: ModelScores
    base: ModelScores | None = None
    paired: Paired | None = None
    errors: dict[str, int] = Field(default_factory=dict)
    worst_examples: list[WorstExample] = Field(default_factory=list)
    top_confusions: list[TopConfusion] = Field(default_factory=list)
    slices: dict[str, Slice] = Field(default_factory=dict)
    majority: float | None = None
    """A classifier's floor: accuracy of always answering the training data's commonest label."""
    reasoning: dict[str, ReasoningStats] = Field(default_factory=dict)
    """Per model (base, finetuned) that reasoned before answering: how often and how long."""


class Loss(Schema):
    loss: float
    perplexity: float


class Validation(Schema):
    """Loss on the answer tokens of the validation split, as in training."""
    finetuned: Loss | None = None
    base: Loss | None = None


class Memorisation(Schema):
    """Held-out answers (of min_chars or more) that reproduce a training answer verbatim."""
    checked: int
    verbatim_train_answers: int
    rate: float
    min_chars: int


class Generalisation(Schema):
    train: list[tuple[int, float]] = Field(default_factory=list)
    """(step, train loss) of every logged step."""
    val: list[tuple[int, float]] = Field(default_factory=list)
    """(step, validation loss) of every evaluation."""
    final_train_loss: float | None = None
    """Mean of the last three logged train losses."""
    final_val_loss: float | None = None
    gap: float | None = None
    """final_val_loss - final_train_loss: large and growing means overfitting."""
    memorisation: Memorisation | None = None


class Forgetting(Schema):
    examples: int
    finetuned: float
    base: float | None = None
    paired: Paired | None = None
    source: str = "probe"
    """What measured it: the bundled 20-question probe, or `benchmarks` (their items pooled)."""
    tasks: list[str] = Field(default_factory=list)
    """The benchmark tasks pooled, when source is benchmarks."""


class Benchmark(Schema):
    """One lm-evaluation-harness task (or group, its subtasks' items pooled), both models on the
    same items with the same settings."""
    task: str
    metric: str
    """The task's first metric (acc for multiple choice, exact_match for gsm8k), per item."""
    examples: int
    num_fewshot: int | None = None
    finetuned: Interval
    base: Interval | None = None
    paired: Paired | None = None
    subtasks: list[str] = Field(default_factory=list)
    items: list[str] = Field(default_factory=list)
    """Item ids (subtask:doc_id), in the order of `scores`."""
    scores: dict[str, list[float]] = Field(default_factory=dict)
    """Per model (base, finetuned), each item's metric: what compare pairs across runs."""


class Benchmarks(Schema):
    harness: str
    """The harness and its version, e.g. lm-evaluation-harness 0.4.13."""
    limit: int | None = None
    apply_chat_template: bool = False
    tasks: dict[str, Benchmark] = Field(default_factory=dict)


class JudgeGrade(Schema):
    """One judged example (eval/judge.jsonl)."""
    id: str
    """set:index, as the predictions and the review labels name it."""
    finetuned: int | None
    base: int | None = None
    preference: float | None = None
    """Fine-tuned vs base, position bias cancelled: 1 fine-tuned better in both orders, 0 base
    better in both, 0.5 a tie or a flip between the orders."""
    first_position_wins: int = 0
    """Of the two pairwise orders, how many the answer shown first won (0-2)."""
    unparsed: int = 0
    """Judge replies for this example with no grade or verdict in them."""


class JudgeSet(Schema):
    examples: int
    finetuned: Interval
    """Mean grade, with its bootstrap CI."""
    finetuned_pass: Interval
    """Share of answers graded at or above pass_grade."""
    base: Interval | None = None
    base_pass: Interval | None = None
    paired: Paired | None = None
    """Fine-tuned minus base grade, over the same examples."""
    win_rate: Interval | None = None
    """Pairwise: the fine-tuned answer's mean preference (ties count half)."""
    position_bias: float | None = None
    """Share of pairwise verdicts that went to the answer shown first (0.5: none)."""
    unparsed: int = 0
    """Judge answers with no grade or verdict in them (left out of the scores)."""


class Judge(Schema):
    url: str
    model: str
    scale: int
    pass_grade: int
    min_kappa: float
    sets: dict[str, JudgeSet] = Field(default_factory=dict)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BiasDimension(Schema):
    prompts: int
    per_group: dict[str, float] = Field(default_factory=dict)
    gap: float = 0.0
    gap_ci: tuple[float, float] | None = None
    """Bootstrap 95% CI of the gap, resampling prompts."""
    prompt_indices: list[int] = Field(default_factory=list)
    """Which test prompts were probed (their index in the test set), in `scores` order."""
    scores: dict[str, list[float]] = Field(default_factory=dict)
    """Per group, the score of each probed prompt's copy: what a paired comparison of two runs'
    gaps (tunesmith compare) resamples."""
    changed_share: float = 0.0
    exceeds_max_gap: bool = False
    note: str | None = None


class Bias(Schema):
    max_gap: float
    on_gap: Literal["warn", "fail"]
    dimensions: dict[str, BiasDimension] = Field(default_factory=dict)


class EvalSummary(Schema):
    metric: str
    """The primary metric (eval.metric) that `value`, the paired deltas and the bias gaps use."""
    baseline: str = "base model"
    """What the `base` scores are: the model before fine-tuning, or for an encoder (whose head
    starts random) a k-NN vote over the frozen encoder's embeddings."""
    sets: dict[str, SetResult] = Field(default_factory=dict)
    """Per evaluation set: test, and each data.eval_sets entry (e.g. ood)."""
    validation: Validation = Field(default_factory=Validation)
    generation_examples_per_second: float | None = None
    generation_processes: int = 1
    """Worker processes that generated the answers (`eval --processes N`)."""
    generalisation: Generalisation | None = None
    """Loss curves and their final gap (from train/log.jsonl), and the memorisation probe."""
    forgetting: Forgetting | None = None
    """The general-question probe: what fine-tuning cost outside the task."""
    bias: Bias | None = None
    benchmarks: Benchmarks | None = None
    """eval.benchmarks: lm-evaluation-harness tasks, base and fine-tuned paired per item."""
    judge: Judge | None = None
    """eval.judge: an LLM judge's grades and pairwise verdicts (per example in eval/judge.jsonl)."""
    warnings: list[str] = Field(default_factory=list)
    """Bias gaps over eval.bias.max_gap, and anything else a reader of the numbers must know."""


class Prediction(Schema):
    """One evaluated example: both models' answers, scores, and the error class."""
    set: str
    index: int
    meta: dict[str, Any]
    prompt: str
    reference: str
    finetuned_prediction: str = ""
    finetuned_score: float | None = None
    finetuned_error: str = ""
    base_prediction: str | None = None
    base_score: float | None = None
    finetuned_reasoning: str | None = None
    """The <think> block the model wrote before its answer (scored without it), if any."""
    base_reasoning: str | None = None


# --- training --------------------------------------------------------------------------------

class GuardEvent(Schema):
    """An overfitting guard that fired (early_stopping, gap_alarm), when and why."""
    guard: str
    step: int
    message: str


class TrainProgress(Schema):
    """How far training went and how fast: what a training backend reports."""
    steps: int
    max_steps: int
    epochs: float
    train_loss: float | None
    tokens_seen: int
    tokens_per_second: float
    final_eval_loss: float | None = None


class TrainSummary(TrainProgress):
    """train/summary.json: the backend's progress, and what was trained where."""
    runtime_seconds: float
    resumed_from: str | None
    device: str
    mixed_precision: str
    method: str
    trainable_parameters: int
    train_examples: int
    val_examples: int
    guards: list[GuardEvent] = Field(default_factory=list)
    peak_memory_bytes: int | None = None
    """Peak memory of training: the GPU's allocated peak on CUDA, else the process's peak
    resident memory (which includes the data stage and the framework)."""
    processes: int = 1
    """Training processes (`tunesmith train --processes N`); the memory peak is the first one's."""


class LogEntry(Schema):
    """One line of train/log.jsonl: a training log or an evaluation."""
    model_config = ConfigDict(extra="allow")  # whatever else the trainer logged (grad_norm, ...)
    step: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None


# --- tuning ----------------------------------------------------------------------------------

class TuneBudget(Schema):
    trials: int | None
    timeout_minutes: float | None
    max_training_steps: int | None


class CurvePoint(Schema):
    """One run of `tunesmith curve`: the recipe trained on a share of its training split."""
    fraction: float
    seed: int
    train_examples: int
    value: float
    ci_low: float
    ci_high: float
    run: str
    scores: list[float] = Field(default_factory=list)
    """Each test example's score, in test order: what the forecast's bootstrap resamples."""


class CurveFit(Schema):
    """score(n) = ceiling - scale * (n / N)^(-exponent), N the full training split."""
    ceiling: float
    scale: float
    exponent: float


class CurveForecast(Schema):
    multiple: float
    """Times the full training split (2x, 10x)."""
    train_examples: int
    value: float
    ci_low: float
    ci_high: float
    gain: float
    """value minus the full split's observed score."""


class CurveSummary(Schema):
    """`tunesmith curve`: the learning curve of the user's task and what more data would buy
    (curve.json in the full-data run's directory)."""
    metric: str
    set: str = "test"
    examples: int = 0
    """Examples in the scored set."""
    points: list[CurvePoint] = Field(default_factory=list)
    fit: CurveFit | None = None
    forecasts: list[CurveForecast] = Field(default_factory=list)
    flattened: bool | None = None
    verdict: str = ""


class TuneSummary(Schema):
    strategy: str
    pruner: str
    cv_folds: int
    space: dict[str, dict[str, Any]]
    budget: TuneBudget
    duplicates: int
    trials: int
    completed: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_user_attrs: dict[str, Any]
    training_steps_used: int
    seconds: float
    workers: list[str]
    figures: list[str]
    card_text: str


# --- data ------------------------------------------------------------------------------------

class InvalidRow(Schema):
    model_config = ConfigDict(extra="allow")
    line: int | None = None
    message: str = ""


class FileReport(Schema):
    format: str
    valid_rows: int
    invalid_rows: int
    invalid: list[dict[str, Any]] = Field(default_factory=list)
    non_text_parts_dropped: dict[str, int] | None = None


class FileLicense(Schema):
    """One data file's license (data/licenses.py): what it is, where that was found, and how much
    of the file the run kept."""
    path: str
    role: str
    """train, val, test, or `eval set <name>`."""
    license: str
    """An id of tunesmith/licenses.py's table (or an expression, A AND B), or unknown."""
    declared_in: str
    """data.licenses['<key>'], a dataset card's path, a dataset_info.json, or nowhere."""
    source: str | None = None
    attribution: str | None = None
    consent: str | None = None
    """Feedback exported from a served model: its users' consent (monitor.consent)."""
    via: str | None = None
    """A file an earlier run trained on: the adapter (train.init_adapter) that passes it on."""
    sha256: str | None = None
    rows_kept: int | None = None
    """The file's rows in the split it feeds, after cleaning, filters and duplicate removal."""


class DataLicenses(Schema):
    files: list[FileLicense] = Field(default_factory=list)
    intended_use: str = "unspecified"
    accepted: list[str] = Field(default_factory=list)
    """data.accept_license: ids trained on despite the declared use (a separate agreement)."""


class Dedup(Schema):
    exact_removed: int = 0
    near_removed: int = 0
    clusters: list[dict[str, Any]] = Field(default_factory=list)
    """The largest duplicate clusters: kind, size, kept row, example."""
    answer_clusters: list[dict[str, Any]] = Field(default_factory=list)
    """Templated answers shared by many rows (reported, not removed)."""


class LeakageSet(Schema):
    model_config = ConfigDict(extra="allow")  # removed_from_<set> with drop_from_eval
    duplicates_of_train: int = 0
    train_rows_involved: int = 0
    ngram_overlap: dict[str, Any] = Field(default_factory=dict)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    removed_from_train: int | None = None


class Leakage(Schema):
    model_config = ConfigDict(extra="allow")
    action: str
    sets: dict[str, LeakageSet] = Field(default_factory=dict)


class Filters(Schema):
    dropped: dict[str, int] = Field(default_factory=dict)
    examples: dict[str, list[Any]] = Field(default_factory=dict)


class Privacy(Schema):
    model_config = ConfigDict(extra="allow")  # counts per kind of personal data found
    mode: str
    rows_dropped: int | None = None


class Split(Schema):
    stratified_by: str = "none"
    seed: int = 0
    train_fraction: float = 1.0
    """data.train_fraction: the share of the training split kept (a learning curve's point)."""
    train_rows_before_fraction: int | None = None


class Balance(Schema):
    strategy: str = "none"
    by: str = "none"
    class_weights: dict[str, float] | None = None
    """Loss weight per stratum (strategy class_weights)."""
    distribution: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Rows per stratum, per split (empty without strata)."""


class Augment(Schema):
    methods: list[str] = Field(default_factory=list)
    rows_added: int = 0


class DataReport(Schema):
    """data/report.json. The descriptive sections (describe, balance, split) are free-form
    tables for people; the sections other stages read are typed."""
    kind: str
    files: dict[str, FileReport]
    loaded_train_rows: int
    clean: dict[str, int] | None = None
    privacy: Privacy | None = None
    filters: Filters | None = None
    dedup: Dedup = Field(default_factory=Dedup)
    split: Split = Field(default_factory=Split)
    leakage: Leakage | None = None
    balance: Balance = Field(default_factory=Balance)
    augment: Augment | None = None
    bias: dict[str, Any] | None = None
    """The training split's group x answer-class audit and mitigation (data/bias.py)."""
    licenses: DataLicenses | None = None
    """Every data file's license, source and attribution (data/licenses.py)."""
    splits: dict[str, int] = Field(default_factory=dict)
    describe: dict[str, Any] = Field(default_factory=dict)

    def file_rows(self) -> list[list[Any]]:
        """[file, format, valid rows, invalid rows] per input file: the files table of every report."""
        return [[path, f.format, f.valid_rows, f.invalid_rows] for path, f in self.files.items()]


class InspectReport(Schema):
    """`tunesmith data inspect FILE`: one file described, from one pass of the data stage."""
    path: str
    format: str
    kind: str
    rows: int
    valid_rows: int
    invalid_rows: int
    invalid: list[dict[str, Any]] = Field(default_factory=list)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    non_text_parts_dropped: dict[str, int] = Field(default_factory=dict)
    tool_calling_rows: int = 0
    reasoning_rows: int = 0
    """Rows with an assistant turn that carries reasoning (reasoning parts, reasoning_content, <think>)."""
    turns: dict[str, Any] | None = None
    labels: dict[str, int] | None = None
    preference: dict[str, int] | None = None
    """pairs (DPO) or desirable / undesirable answers (KTO)."""
    tokenizer: str = ""
    tokens: dict[str, float] = Field(default_factory=dict)
    """p50, p90, p99 and max tokens per valid row, over every valid row."""
    tokens_measure: str = ""
    """What one row's tokens count (a chat's rendering, a document, a prompt with its chosen answer)."""
    data_report: DataReport


# --- monitoring ------------------------------------------------------------------------------

class DriftReference(Schema):
    """train/drift_reference.json: what the training prompts looked like (monitor/reference.py)."""
    rows: int
    lengths: list[int]
    """Prompt lengths in the model's tokens, one per sampled training row."""
    vocabulary: list[str]
    oov_rate: float
    """Out-of-vocabulary rate of held-out training prompts against `vocabulary`."""
    label_field: str | None = None
    labels: dict[str, int] = Field(default_factory=dict)
    """Answer labels and their counts (empty: the task has no labels)."""
    embedding_model: str | None = None
    """The encoder of train/drift_embeddings.safetensors, None when there are none."""


# --- the manifest ----------------------------------------------------------------------------

class ArtifactEntry(Schema):
    sha256: str
    stage: str
    bytes: int | None = None
    written: str | None = None


class Manifest(Schema):
    model_config = ConfigDict(extra="allow")
    artifacts: dict[str, ArtifactEntry] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


# --- reading and writing ---------------------------------------------------------------------

T = TypeVar("T", bound=Schema)


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f"; and {error.error_count() - 1} more" if error.error_count() > 1 else ""
    if first["type"] == "json_invalid":
        at = re.search(r"line (\d+) column (\d+)", str(first.get("ctx", {}).get("error", "")))
        return "not valid JSON" + (f" at line {at.group(1)}, column {at.group(2)}" if at else "")
    return f"{where}: {validation_problem(first)}{more}"


def load(schema: type[T], path: Path) -> T:
    """The file at `path` as `schema`; a ConfigError naming the file and field if it is not."""
    try:
        return schema.model_validate_json(path.read_bytes())
    except ValidationError as error:
        raise ConfigError(f"{path}: not a valid {words(schema.__name__)} ({_problem(error)}). The file was "
                          "edited or written by another tunesmith version; run the stage that writes "
                          "it again.") from None


def load_optional(schema: type[T], path: Path) -> T | None:
    return load(schema, path) if path.exists() else None


def load_rows(schema: type[T], path: Path) -> list[T]:
    """A JSONL file of `schema` rows."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(schema.model_validate_json(line))
            except ValidationError as error:
                raise ConfigError(f"{path}:{number}: not a valid {words(schema.__name__)} "
                                  f"({_problem(error)}).") from None
    return rows


def dump(artifact: Schema) -> dict[str, Any]:
    return artifact.model_dump(mode="json", exclude_none=False)


def save(artifact: Schema, path: Path) -> None:
    write_text(path, json.dumps(dump(artifact), indent=2, ensure_ascii=False) + "\n")


def save_rows(rows: list[Schema], path: Path) -> None:
    write_text(path, "".join(json.dumps(dump(r), ensure_ascii=False) + "\n" for r in rows))
