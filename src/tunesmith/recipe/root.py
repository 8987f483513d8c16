"""The recipe itself: its sections, and what holds across them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from tunesmith.recipe.base import _Section
from tunesmith.recipe.data import DataConfig, FilterConfig
from tunesmith.recipe.evaluation import EvalConfig
from tunesmith.recipe.serving import MonitorConfig, ServeConfig
from tunesmith.recipe.training import ModelConfig, TrainConfig, TuneConfig


class OutputConfig(_Section):
    dir: str = "runs"
    """Parent directory of run directories."""
    run_name: str | None = None
    """Run directory name; defaults to the recipe's `name`."""


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
        decoder_sft = self.model.family == "causal_lm" and not self.train.learns_from_answers
        if self.train.packing is True and not decoder_sft:
            raise ValueError("train.packing packs decoder demonstrations (train.method lora, qlora or "
                             "full with model.family causal_lm); set train.packing: auto or false")
        if self.model.family != "causal_lm" and self.train.learns_from_answers:
            raise ValueError(f"train.method {self.train.method} is built for decoders (model.family: "
                             f"causal_lm); a {self.model.family} model trains with train.method lora or "
                             "full")
        return self

    @model_validator(mode="after")
    def _rewards_apply(self) -> Recipe:
        """grpo's built-in rewards need what they score: a metric, reasoning kept."""
        if self.train.method != "grpo":
            return self
        names = {r.fn for r in self.train.rl.rewards}
        if "metric" in names and self.eval.metric == "none":
            raise ValueError("train.rl.rewards: metric scores answers with eval.metric, which is none; "
                             "set eval.metric (exact_match, json_fields, token_f1, ...) or drop the metric "
                             "reward")
        if "reasoning_format" in names and self.train.reasoning == "drop":
            raise ValueError("train.rl.rewards: reasoning_format rewards a <think> block, but "
                             "train.reasoning is drop; set train.reasoning: train, or drop the "
                             "reasoning_format reward")
        return self

    @model_validator(mode="after")
    def _benchmarks_generate(self) -> Recipe:
        if self.eval.benchmarks.tasks and self.model.family == "encoder":
            raise ValueError("eval.benchmarks scores language models (model.family causal_lm or seq2seq); "
                             "an encoder answers only its labels: remove eval.benchmarks")
        return self

    @model_validator(mode="after")
    def _reweight_applies(self) -> Recipe:
        if "reweight" in self.data.bias.mitigate and (self.train.learns_from_answers
                                                      or self.model.family != "causal_lm"
                                                      or self.train.backend == "trl"):
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


