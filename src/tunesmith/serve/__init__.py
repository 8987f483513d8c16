"""`tunesmith serve`: the run's model behind an OpenAI-compatible API.

    tunesmith serve runs/demo                       # 127.0.0.1:8000, the fine-tuned model
    tunesmith serve runs/demo --host 0.0.0.0        # refused without an API key (or --insecure)
    TUNESMITH_API_KEY=k1,k2 tunesmith serve runs/demo --host 0.0.0.0
    tunesmith serve runs/demo --engine vllm         # vLLM (CUDA) started here, the adapter as a
                                                    # LoRA module, tunesmith's watched server in front
    tunesmith serve runs/demo serve.engine=upstream serve.upstream.url=http://gpu-host:8001
                                                    # in front of a vLLM / TGI / SGLang / llama.cpp server
    tunesmith export runs/demo merged/              # the merged model for vLLM / TGI (tunesmith.export)

    engines.py   who generates (serve.engine): builtin (models/generation.py, evaluation's engine
                 too), upstream.py (an OpenAI-compatible server), vllm.py (vLLM started here)
    batcher.py   dynamic batching over a bounded queue (429 when full)
    answer.py    deadline, output check, fallback
    app.py       the FastAPI app: routes, errors in OpenAI's shape, API keys, body limit
    state.py     what is served: model, recipe, cache, fallback      cache.py   LRU + TTL
    protocol.py  the OpenAI request / response shapes                errors.py  classes, JSON log
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from tunesmith.errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def api_keys(key_file: str | None) -> list[str]:
    """Keys from $TUNESMITH_API_KEY (comma-separated) and a file (one a line); never logged."""
    keys = [k.strip() for k in os.environ.get("TUNESMITH_API_KEY", "").split(",") if k.strip()]
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ConfigError(f"--api-key-file {key_file}: not a file. Give a file with one key a line.")
        keys += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return keys


def check_exposure(host: str, keys: list[str], insecure: bool) -> None:
    """Without a key, only this machine may call the server, unless told otherwise."""
    loopback = host in LOOPBACK or _is_loopback(host)
    if not keys and not loopback and not insecure:
        raise ConfigError(f"--host {host}: serving beyond this machine needs an API key. Set "
                          "TUNESMITH_API_KEY (or --api-key-file), or pass --insecure to serve without one.")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(target: str, host: str = "127.0.0.1", port: int = 8000, api_key_file: str | None = None,
          insecure: bool = False, engine: str | None = None, overrides: list[str] | None = None) -> None:
    """Serve `target`; `engine` (the --engine flag) is the recipe key serve.engine."""
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.state import load_served, resolve_target

    keys = api_keys(api_key_file)
    check_exposure(host, keys, insecure)
    if engine is not None:
        overrides = [*(overrides or []), f"serve.engine={engine}"]
    recipe, model_dir, name = resolve_target(target, overrides)
    from tunesmith.models.loading import model_location
    from tunesmith.serve.engines import check

    check(recipe)

    # a wrong path or an unreachable hub fails here, in one line, not as a traceback at startup
    model_location(recipe.model)
    if recipe.serve.fallback.kind == "run":
        fallback_recipe, _, _ = resolve_target(recipe.serve.fallback.run)
        model_location(fallback_recipe.model)
    app = create_app(lambda: load_served(target, overrides), keys, recipe.serve)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
