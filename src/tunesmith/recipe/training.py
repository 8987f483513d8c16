"""The model, train and tune sections: the base model, how it is fine-tuned, the search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunesmith.errors import ConfigError
from tunesmith.recipe.base import _Section


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
    """How the fine-tuned model will be used. `commercial` stops a run whose base model's license,
    or a training file's (data.licenses), forbids commercial use, and warns on conditions; the
    model card records the lineage of both."""
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


class RewardSpec(_Section):
    fn: str
    """`format` (the answer passes serve.output_check, or parses as JSON when the references are
    JSON), `metric` (eval.metric of the answer against the row's reference answer), `reasoning_format`
    (a `<think>...</think>` block, then an answer), or a user function `module:function` (the module
    importable from the working directory), called as fn(prompts, completions, rows) -> one number
    (or None: not scored) per completion."""
    weight: float = 1.0
    """How much this reward counts in the sum whose group-relative advantage GRPO follows."""


BUILT_IN_REWARDS = ("format", "metric", "reasoning_format")


class RLConfig(_Section):
    """Reinforcement learning from verifiable rewards (`train.method: grpo`, TRL's GRPOTrainer):
    for each prompt of the training split the model writes `num_generations` answers, each is scored
    by the rewards, and the adapter moves toward the answers that beat their group's mean."""
    num_generations: int = Field(4, ge=2)
    """Answers sampled per prompt (a group): advantages are rewards relative to the group's mean.
    train.batch_size counts answers, so a step sees batch_size x grad_accum / num_generations
    prompts."""
    max_completion_length: int | None = Field(None, gt=0)
    """Longest answer sampled, in tokens; None: eval.max_new_tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the rollouts (a group needs varied answers to learn from)."""
    kl: float = Field(0.0, ge=0)
    """KL coefficient (TRL's beta) toward the reference: the base model, or with
    train.init_adapter the adapter training started from. 0 (TRL's default) skips the reference's
    forward pass."""
    rewards: list[RewardSpec] = Field(default_factory=list)
    """The rewards and their weights; a string is a reward of weight 1. Empty (the default): derived
    from the task, each of weight 1: `metric` (unless eval.metric is none), and `format` when the
    task has one (serve.output_check set, or training answers that are all JSON objects)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the rewards' std in the group (GRPO), the batch, or not at all (Dr. GRPO)."""
    qlora: bool = False
    """Train the GRPO adapter on a base stored in 4-bit NF4 (as train.method: qlora)."""
    rollouts: Literal["auto", "tunesmith", "trl", "vllm"] = "auto"
    """Who writes the answers: `tunesmith` (the batched engine evaluation and serving use, with the
    LoRA adapter merged for the rollout), `trl` (TRL's own generate), `vllm` (TRL's vLLM colocate
    mode, CUDA with vllm installed). `auto`: vllm where it runs, else tunesmith (measured faster on
    the CPU: bench/rollouts.py)."""

    @field_validator("rewards", mode="before")
    @classmethod
    def _names_are_rewards(cls, value: Any) -> Any:
        """`rewards: [metric, format]` is each with weight 1."""
        if isinstance(value, list):
            return [{"fn": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, value: list[RewardSpec]) -> list[RewardSpec]:
        for spec in value:
            if spec.fn not in BUILT_IN_REWARDS and ":" not in spec.fn:
                raise ValueError(f"reward {spec.fn!r}: not one of {', '.join(BUILT_IN_REWARDS)}, nor a "
                                 "user function written module:function")
        return value


class EarlyStoppingConfig(_Section):
    patience: int | None = Field(None, gt=0)
    """Stop after this many validation checks without improvement; None turns it off."""
    min_delta: float = Field(0.0, ge=0.0)
    """An improvement smaller than this does not count."""


class TrainConfig(_Section):
    method: Literal["lora", "qlora", "full", "dpo", "kto", "grpo"] = "lora"
    """`lora`: train small adapter matrices on demonstrations (default); `qlora`: the same adapters
    on a base stored in 4-bit NF4 with double quantization (bitsandbytes; about a quarter of the
    base's bf16 memory), dequantized to merge, evaluate and serve; `full`: update every weight;
    `dpo` / `kto`: a LoRA adapter trained on preference data with TRL's DPO or KTO trainer (DPO:
    chosen/rejected pairs; KTO: answers labelled desirable or not, pairs split in two); `grpo`: a
    LoRA adapter trained from rewards on its own sampled answers (TRL's GRPOTrainer; train.rl)."""
    rl: RLConfig = Field(default_factory=RLConfig)
    """grpo: rollouts, rewards, KL (train.rl.*)."""
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
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seed for weight init of the adapter and data order."""
    report_to: list[Literal["mlflow", "tensorboard", "wandb", "trackio"]] = Field(default_factory=list)
    """Experiment trackers that follow the run (tunesmith.track): the resolved recipe as
    parameters, the training and validation curves with throughput and memory, the evaluation's
    scores with their CI bounds, the card, report and eval summary as artifacts. MLflow writes to
    `tracking/mlflow.db` in the run directory unless MLFLOW_TRACKING_URI names a server;
    TensorBoard to `tracking/tensorboard/`; W&B and Trackio where their own settings say
    (WANDB_*, TRACKIO_*). Credentials come from the environment only. A string is one tracker;
    `none` or [] is none. Never makes an artifact stale."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_none(cls, value: Any) -> Any:
        """`report_to: mlflow` is [mlflow]; `none` (or null) is []."""
        if value is None or value == "none":
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML reads a bare `no` as false: `train.mixed_precision=no` means "no"."""
        return "no" if value is False else value

    @property
    def adapter(self) -> Literal["lora", "full"]:
        """What the run's model directory holds: a LoRA adapter (lora, qlora, dpo, kto, grpo) or full
        weights."""
        return "full" if self.method == "full" else "lora"

    @property
    def preference(self) -> bool:
        return self.method in ("dpo", "kto")

    @property
    def weights(self) -> Literal["full", "lora", "qlora"]:
        """What the run trains: full weights, a LoRA adapter, or one on a 4-bit NF4 base (qlora, or
        grpo with rl.qlora), which is how its base is loaded to train, evaluate, serve and merge."""
        if self.method == "qlora" or (self.method == "grpo" and self.rl.qlora):
            return "qlora"
        return self.adapter

    @property
    def learns_from_answers(self) -> bool:
        """dpo, kto, grpo: TRL's trainers on judged answers, not the demonstrations' token loss."""
        return self.preference or self.method == "grpo"


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
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Sampler seed."""

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        from tunesmith.recipe.loading import apply_overrides, recipe_from_dict  # the whole recipe

        for key in space:
            try:
                recipe_from_dict(apply_overrides({}, [f"{key}=0"]))
            except ConfigError as error:
                if "unknown key" in str(error):
                    raise ValueError(f"{key} is not a recipe key") from None
        return space


