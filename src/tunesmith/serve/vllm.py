"""serve.engine vllm: vLLM's OpenAI server started by tunesmith, with tunesmith's watched server
in front of it (serve/upstream.py).

vLLM serves the base once and the run's LoRA adapter as a module on it (`--enable-lora
--lora-modules NAME=DIR`; serve.vllm.adapters adds other runs on the same base: multi-LoRA), with
tensor parallelism, the max model length and any extra arguments the recipe gives. It listens on
127.0.0.1 only, with a key of its own made at start; clients reach it through tunesmith, whose
API keys (all of them) guard the public port. A full fine-tune is served as its own weights.

    python -m vllm.entrypoints.openai.api_server --model BASE --served-model-name NAME-base
        --enable-lora --lora-modules NAME=runs/NAME/model --max-lora-rank R
        --tensor-parallel-size N [--max-model-len L] --host 127.0.0.1 --port P ...
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.events import event
from tunesmith.recipe import Recipe, load_recipe
from tunesmith.serve.upstream import UpstreamEngine

MISSING = ("serve.engine vllm needs vLLM on a CUDA machine: pip install vllm. Or serve with "
           "serve.engine builtin, or put tunesmith in front of a vLLM you run yourself: "
           "serve.engine upstream, serve.upstream.url.")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int


def adapters(recipe: Recipe, model_dir: Path | None, name: str) -> list[Adapter]:
    """The run's adapter and serve.vllm.adapters' (other LoRA runs on the same base)."""
    found = [Adapter(name, model_dir, recipe.train.lora.r)] if model_dir is not None \
        and recipe.train.adapter == "lora" else []
    for other in recipe.serve.vllm.adapters:
        run = Path(other)
        if not (run / "model" / "adapter_config.json").is_file() or not (run / "recipe.yaml").is_file():
            raise ConfigError(f"serve.vllm.adapters: {other} is not a trained LoRA run directory "
                              "(model/adapter_config.json and recipe.yaml). Give run directories.")
        theirs = load_recipe(run / "recipe.yaml")
        if theirs.model.name != recipe.model.name:
            raise ConfigError(f"serve.vllm.adapters: {other} was trained on {theirs.model.name}, not "
                              f"{recipe.model.name}; vLLM serves adapters of one base together.")
        found.append(Adapter(run.resolve().name, run / "model", theirs.train.lora.r))
    return found


def vllm_command(recipe: Recipe, model_dir: Path | None, name: str, base: str) -> list[str]:
    """The vLLM command line for a run (`base`: where the base model's weights are)."""
    cfg = recipe.serve.vllm
    loras = adapters(recipe, model_dir, name)
    full = model_dir is not None and recipe.train.adapter != "lora"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model_dir) if full else base,
               "--served-model-name", name if full else f"{name}-base",
               "--host", "127.0.0.1", "--port", str(cfg.port),
               "--tensor-parallel-size", str(cfg.tensor_parallel_size),
               "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if recipe.model.revision and not full:
        command += ["--revision", recipe.model.revision]
    if recipe.model.trust_remote_code:
        command += ["--trust-remote-code"]
    if cfg.max_model_len:
        command += ["--max-model-len", str(cfg.max_model_len)]
    if loras:
        command += ["--enable-lora", "--max-loras", str(len(loras)),
                    "--max-lora-rank", str(cfg.max_lora_rank or max(a.rank for a in loras)),
                    "--lora-modules", *(f"{a.name}={a.path}" for a in loras)]
    return command + list(cfg.extra_args)


@dataclass
class VLLMEngine(UpstreamEngine):
    """The upstream engine, owning the vLLM process it talks to."""
    process: Any = field(default=None, repr=False)

    def close(self) -> None:
        super().close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start(recipe: Recipe, model_dir: Path | None, name: str) -> VLLMEngine:
    """vLLM started and answering, and the engine that forwards to it."""
    from tunesmith.interrupts import die_with_parent
    from tunesmith.models.loading import model_location

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(MISSING)
    cfg = recipe.serve.vllm
    key = secrets.token_urlsafe(24)  # vLLM's own key: only tunesmith calls it
    command = vllm_command(recipe, model_dir, name, model_location(recipe.model))
    event("engine", message=f"starting vLLM on 127.0.0.1:{cfg.port}: {' '.join(command[2:])}")
    log = Path(os.environ.get("TUNESMITH_VLLM_LOG", os.devnull))
    with log.open("ab") as sink:
        # the clients' keys stay with tunesmith: vLLM gets only its own
        env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_API_KEY"} | {"VLLM_API_KEY": key}
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                   env=env, preexec_fn=die_with_parent)
    upstream = recipe.serve.upstream.model_copy(update={
        "url": f"http://127.0.0.1:{cfg.port}",
        "model": name, "base_model": None if model_dir is not None and recipe.train.adapter != "lora"
        else f"{name}-base"})
    served = recipe.model_copy(update={"serve": recipe.serve.model_copy(update={"upstream": upstream})})
    engine = VLLMEngine.for_recipe(served, model_dir, name)
    engine.api_key, engine.process = key, process
    _wait_until_ready(engine, process, cfg.startup_timeout_seconds)
    return engine


def _wait_until_ready(engine: VLLMEngine, process: Any, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"vLLM exited with {process.returncode} before serving (its output: set "
                              "TUNESMITH_VLLM_LOG=FILE). Check the GPU, serve.vllm and vLLM's version.")
        try:
            status = engine.client.get("/v1/models").status_code
        except httpx.HTTPError:
            status = None
        if status == 200:
            return
        if status in (401, 403):
            engine.close()
            raise ConfigError(f"vLLM on port {engine.url.rsplit(':', 1)[-1]} refused tunesmith's key: is "
                              "another server on serve.vllm.port? Choose a free port.")
        time.sleep(0.5)
    engine.close()
    raise ConfigError(f"vLLM did not answer within serve.vllm.startup_timeout_seconds ({timeout:g} s).")
