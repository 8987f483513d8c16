"""What a server serves: a model behind an engine and its batcher, the recipe it was trained
with (system prompt, chat template, output check, limits), and who answers when it fails.

    served = load_served("runs/demo")                 # a run directory
    served = load_served("HuggingFaceTB/SmolLM2-135M-Instruct")   # or a hub id / model directory
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.events import event
from tunesmith.models.generation import Engine
from tunesmith.models.loading import cache_dir
from tunesmith.monitor.embed import load_encoder
from tunesmith.monitor.live import Monitor, Reference
from tunesmith.monitor.metrics import Metrics
from tunesmith.monitor.store import Store
from tunesmith.recipe import Recipe, load_recipe
from tunesmith.rundir import RunDir
from tunesmith.serve import engines
from tunesmith.serve.batcher import Batcher
from tunesmith.serve.cache import ResponseCache
from tunesmith.serve.guards import Guards
from tunesmith.serve.guards import build as build_guards


@dataclass
class Served:
    name: str
    """The model id clients use (`model`), and that responses name."""
    recipe: Recipe
    engine: Engine
    batcher: Batcher
    cache: ResponseCache
    fallback: Fallback | None = None
    metrics: Metrics = field(default_factory=Metrics)
    monitor: Monitor | None = None
    """Request log, windows, drift and alerts (monitor.enabled)."""
    run_dir: Path | None = None
    guards: Guards = field(default_factory=Guards)
    """serve.guards: scope guard, output filter, rate limits (serve/guards.py)."""
    created: int = field(default_factory=lambda: int(time.time()))

    async def start(self) -> None:
        self.batcher.start()
        if self.fallback and self.fallback.served:
            await self.fallback.served.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self.fallback and self.fallback.served:
            await self.fallback.served.stop()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.close)
        close = getattr(self.engine, "close", None)
        if close is not None:  # an upstream's connections; a vLLM tunesmith started
            await asyncio.to_thread(close)


@dataclass
class Fallback:
    """Who answers when the primary fails (serve.fallback)."""
    kind: str
    name: str
    served: Served | None = None
    """kind run: the other run, with its own engine and batcher."""
    answer: str | None = None
    """kind fixed: the answer."""
    on_invalid_output: bool = False


def resolve_target(target: str, overrides: list[str] | None = None) -> tuple[Recipe, Path | None, str]:
    """(recipe, trained model directory or None, served name) of a run directory, a model
    directory or a hub id; recipe overrides (serve.*, ...) applied."""
    run = RunDir(Path(target))
    if run.recipe.is_file() and run.manifest.is_file():
        if not run.has_model():
            raise ConfigError(f"{target}: a run directory without a trained model (model/ is missing). "
                              "Run `tunesmith train RECIPE` first, or serve a model directory or hub id.")
        return load_recipe(run.recipe, overrides), run.model, Path(target).resolve().name
    return load_recipe(None, [f"model.name={target}", *(overrides or [])]), None, target


def load_served(target: str, overrides: list[str] | None = None, with_fallback: bool = True) -> Served:
    """A run directory, a local model directory or a hub id, ready to start."""
    recipe, model_dir, name = resolve_target(target, overrides)
    if recipe.model.family != "causal_lm":  # the batched engine (KV cache, prefix cache) is a decoder's
        use = {"encoder": "text-classification", "seq2seq": "text2text-generation"}[recipe.model.family]
        raise ConfigError(f"{target}: model.family {recipe.model.family}; tunesmith serve runs decoders "
                          f"(causal_lm) only. Load its model/ directory with transformers' {use} pipeline.")
    cfg = recipe.serve
    engine = engines.build(recipe, model_dir, name)
    metrics = Metrics()
    run = RunDir(Path(target)) if model_dir is not None else None
    served = Served(name, recipe, engine, Batcher(engine, cfg, metrics),
                    ResponseCache(cfg.cache_size, cfg.cache_ttl_seconds), metrics=metrics,
                    run_dir=run.root if run else None)
    if with_fallback and cfg.fallback.kind != "none":
        served.fallback = _fallback(recipe, name)
    if with_fallback and recipe.monitor.enabled:
        served.monitor = _monitor(recipe, run, name, engine, metrics)
    if with_fallback:
        served.guards = _guards(recipe, run)
    return served


def _guards(recipe: Recipe, run: RunDir | None) -> Guards:
    """serve.guards, the scope guard calibrated on the run's validation prompts."""
    from tunesmith.monitor import reference

    found = reference.read(run.drift_reference, run.drift_embeddings) if run is not None else None
    guards = build_guards(recipe, run, found[1] if found else None)
    for line in guards.describe():
        event("guard", message=line)
    return guards


def _monitor(recipe: Recipe, run: RunDir | None, name: str, engine: Engine, metrics: Metrics) -> Monitor:
    """The request log in the run directory (or monitor.store), and the run's drift reference."""
    from tunesmith.monitor import reference

    cfg = recipe.monitor
    default = run.monitor_db if run is not None else cache_dir() / "serve" / f"{_safe(name)}.db"
    store = Store.open(cfg.store or default, cfg.retention_days)
    found = reference.read(run.drift_reference, run.drift_embeddings) if run is not None else None
    if found is not None and found[1] is not None and cfg.embeddings:
        load_encoder()  # now, not in the middle of traffic at the first window (seconds of CPU)
    if found is None:
        event("warning", message=f"{name}: no drift reference (train/drift_reference.json, written at train "
              "time by this version): requests are logged and judged, but not for drift.")
    return Monitor(cfg, metrics, store, Reference(*found) if found else None, engine.count_tokens)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _fallback(recipe: Recipe, name: str) -> Fallback:
    cfg = recipe.serve.fallback
    if cfg.kind == "run":
        other = load_served(cfg.run, with_fallback=False)
        return Fallback("run", other.name, served=other, on_invalid_output=cfg.on_invalid_output)
    if cfg.kind == "base":
        return Fallback("base", f"{name}:base", on_invalid_output=cfg.on_invalid_output)
    return Fallback("fixed", "fixed-answer", answer=cfg.answer, on_invalid_output=cfg.on_invalid_output)


def describe(served: Served) -> dict[str, Any]:
    """What /health reports."""
    return {"status": "ok", "model": served.name, "engine": served.engine.name,
            "queue": served.batcher.depth, "batches": served.batcher.batches,
            "cache": {"entries": len(served.cache), "hits": served.cache.hits, "misses": served.cache.misses},
            "fallback": served.fallback.name if served.fallback else None}
