"""Who generates for the server: one entry per `serve.engine`, each building an `Engine`
(models/generation.py) from the recipe and the run's trained model. Everything else the server
does (guards, cache, fallback, metrics, drift, feedback, request log, canary) is the same for all.

    builtin    the run's model with transformers, in this process (CPU or GPU)
    upstream   an OpenAI-compatible server at serve.upstream.url (vLLM, TGI, SGLang, llama.cpp)
    vllm       vLLM started here with the run's adapter as a LoRA module on its base (vllm.py)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.events import event
from tunesmith.models.cpu_bf16 import to_cpu_bf16
from tunesmith.models.device import cpu_native_bf16, generation_bf16, resolve_device
from tunesmith.models.families import family_for
from tunesmith.models.generation import Engine, HFEngine
from tunesmith.recipe import Recipe


def _precision(recipe: Recipe, device: str) -> bool:
    cfg = recipe.serve.precision
    return generation_bf16(recipe, device) if cfg == "auto" else cfg == "bf16"


def builtin(recipe: Recipe, model_dir: Path | None, name: str) -> HFEngine:
    """The run's model (adapter on its base), or, without a run, the model itself."""
    from tunesmith.models.loading import load_model, load_run_model, load_tokenizer

    family, device = family_for(recipe.model), resolve_device(recipe.model)
    bf16 = _precision(recipe, device)
    if model_dir is not None:
        run_model = load_run_model(recipe.model, recipe.train.weights, model_dir)
        model, tokenizer, as_base = run_model.model, run_model.tokenizer, run_model.as_base
        if _merge(recipe, bf16):
            model, as_base = model.merge_and_unload(), _no_base
    else:
        model, tokenizer = load_model(recipe.model), load_tokenizer(recipe.model)
        as_base = functools.partial(contextlib.nullcontext, model)  # the model is its own base
    if bf16 and device == "cpu":  # bf16 weights, not autocast: see models/cpu_bf16.py
        if not cpu_native_bf16():
            event("warning", message="serve.precision is bf16 but this CPU emulates bf16 (no AMX or "
                  "AVX512-BF16): expect generation many times slower than fp32. Use serve.precision=fp32.")
        model, bf16 = to_cpu_bf16(model), False
    return HFEngine(model, tokenizer, family, as_base, bf16, recipe.serve.prefix_cache)


def _merge(recipe: Recipe, bf16: bool) -> bool:
    """Serve the LoRA adapter merged into its base (one matmul a layer instead of three: 15% faster
    in bf16 here) when nothing needs the base back: in bf16 (answers already differ from the fp32
    evaluation's), without a `base` fallback. In fp32 the adapter stays separate, so that the
    served model answers exactly as it scored (merging gained nothing measurable in fp32)."""
    return recipe.train.adapter == "lora" and bf16 and recipe.serve.fallback.kind != "base"


def _no_base() -> contextlib.AbstractContextManager:
    raise RuntimeError("the adapter is merged into the served model; its base is not kept")


def upstream(recipe: Recipe, model_dir: Path | None, name: str) -> Engine:
    """Generation on the OpenAI-compatible server at serve.upstream.url."""
    from tunesmith.serve.upstream import UpstreamEngine

    check(recipe)
    return UpstreamEngine.for_recipe(recipe, model_dir, name)


def vllm(recipe: Recipe, model_dir: Path | None, name: str) -> Engine:
    from tunesmith.serve.vllm import start

    return start(recipe, model_dir, name)


ENGINES: dict[str, Callable[[Recipe, Path | None, str], Engine]] = {
    "builtin": builtin, "upstream": upstream, "vllm": vllm}
"""serve.engine -> the function that builds it from (recipe, trained model dir or None, served name)."""


def check(recipe: Recipe) -> None:
    """What can be known before the server starts: the engine is installed."""
    import importlib.util

    if recipe.serve.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        from tunesmith.serve.vllm import MISSING

        raise ConfigError(MISSING)
    upstream = recipe.serve.engine == "upstream"
    if upstream and recipe.serve.fallback.kind == "base" and not recipe.serve.upstream.base_model:
        raise ConfigError("serve.fallback.kind base with serve.engine upstream needs "
                          "serve.upstream.base_model: the name the upstream serves the base model under.")


def build(recipe: Recipe, model_dir: Path | None, name: str) -> Engine:
    return ENGINES[recipe.serve.engine](recipe, model_dir, name)
