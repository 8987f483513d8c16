"""The serve and monitor sections: how `tunesmith serve` answers and what it watches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunesmith.recipe.base import _Section


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
    consent: Literal["unknown", "training", "none"] = "unknown"
    """What the served model's users agreed their prompts, answers and ratings may be used for:
    `training` (later models may learn from them), `none` (they may not: `feedback export`
    refuses), or `unknown` (exported, and every run that trains on them warns). The export's
    dataset card carries it, with the served model's license."""
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


