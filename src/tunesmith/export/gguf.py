"""`tunesmith export RUN OUT --format gguf [--quant f16|q8_0|q4_k_m]`: one GGUF file for
llama.cpp and Ollama, made by llama.cpp's own tools, and an Ollama Modelfile beside it.

    1. the merged model, in float32 (export_merged), its chat template carrying the run's
       system prompt
    2. llama.cpp's converter, `convert_hf_to_gguf.py`, writes an f16 GGUF (the chat template goes
       into its `tokenizer.chat_template` metadata, as llama.cpp and Ollama read it)
    3. llama.cpp's quantizer (`llama_model_quantize`, through llama-cpp-python) for q8_0 / q4_k_m
    4. the Modelfile (ollama.py) and tunesmith_export.json

The converter is the one of the llama.cpp release that the installed llama-cpp-python was built
from: fetched once, from the package index, out of that release's source distribution (which
carries llama.cpp's sources), into tunesmith's cache; or TUNESMITH_LLAMA_CPP names a llama.cpp
checkout. `--check` then loads the GGUF in llama.cpp and answers the run's test prompts (check.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.console import note
from tunesmith.errors import ConfigError
from tunesmith.export.check import Agreement, agreement, checked_run, manifest, new_directory
from tunesmith.export.merged import MANIFEST, export_merged
from tunesmith.export.ollama import context_length, modelfile

QUANTS = ("f16", "q8_0", "q4_k_m")
CONVERTER = "convert_hf_to_gguf.py"
CONVERTER_PARTS = (CONVERTER, "gguf-py/", "conversion/")
"""What the converter needs of llama.cpp's sources: the script, its gguf-py and its model classes."""


def llama_cpp() -> Any:
    try:
        import llama_cpp as module
    except ImportError:
        raise ConfigError("--format gguf needs llama.cpp's Python binding: pip install "
                          "'tunesmith[gguf]' (llama-cpp-python, compiled once; `make setup` sets a "
                          "portable CPU build).") from None
    return module


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py, of the installed llama-cpp-python's release."""
    checkout = os.environ.get("TUNESMITH_LLAMA_CPP")
    if checkout:
        script = Path(checkout) / CONVERTER
        if not script.is_file():
            raise ConfigError(f"TUNESMITH_LLAMA_CPP={checkout}: no {CONVERTER} there. Point it at a "
                              "llama.cpp checkout, or unset it to use the installed llama-cpp-python's "
                              "release.")
        return script
    from tunesmith.models.loading import cache_dir

    version = llama_cpp().__version__
    home = cache_dir() / f"llama.cpp-{version}"
    if not (home / CONVERTER).is_file():
        _fetch_sources(version, home)
    return home / CONVERTER


def _fetch_sources(version: str, home: Path) -> None:
    note(f"fetching llama.cpp's converter once, from llama-cpp-python {version}'s source on the "
         "package index")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                               ":all:", f"llama-cpp-python=={version}", "-d", tmp],
                              capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no source distribution"])[-1]
            raise ConfigError(f"could not download llama-cpp-python {version}'s source for llama.cpp's "
                              f"converter ({last}). Offline: set TUNESMITH_LLAMA_CPP to a llama.cpp "
                              "checkout.")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        staging = Path(tmp) / "llama.cpp"
        with tarfile.open(archives[0]) as archive:
            members = []
            for member in archive.getmembers():
                inside = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and inside.startswith(CONVERTER_PARTS):
                    member.name = inside
                    members.append(member)
            archive.extractall(staging, members=members, filter="data")
        staging.rename(home)


def _arch(merged: Path) -> str:
    try:
        return ", ".join(json.loads((merged / "config.json").read_text()).get("architectures") or ["?"])
    except (OSError, ValueError):
        return "?"


def convert(merged: Path, out_file: Path, name: str) -> None:
    """llama.cpp's converter: the merged model directory -> an f16 GGUF."""
    done = subprocess.run([sys.executable, str(converter()), str(merged), "--outfile", str(out_file),
                           "--outtype", "f16", "--model-name", name], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        reason = ("it does not know this model's tokenizer (its pre-tokenizer is not in llama.cpp's list)"
                  if "pre-tokenizer was not recognized" in last else
                  f"it does not support the architecture {_arch(merged)}" if "not supported" in last.lower()
                  else f"it stopped with exit code {done.returncode}")
        raise ConfigError(f"llama.cpp's converter could not convert this model: {reason}. Its architecture "
                          "and tokenizer must be ones llama.cpp supports (python convert_hf_to_gguf.py "
                          "--print-supported-models); the merged model for vLLM / TGI is `--format hf`.")


@contextlib.contextmanager
def _native_stderr(log: Path) -> Iterator[None]:
    """llama.cpp's C code writes its progress to file descriptor 2: into `log` instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quantize(source: Path, target: Path, quant: str) -> dict[str, str]:
    """llama.cpp's quantizer (llama_model_quantize, as the llama-quantize tool calls it); what it
    reported: the size and bits per weight, and how many tensors fell back to another type (a
    k-quant needs rows divisible by 256: SmolLM2's 576 are not)."""
    module = llama_cpp()
    params = module.llama_model_quantize_default_params()
    params.ftype = {"q8_0": module.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": module.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params.nthread = os.cpu_count() or 1
    log = target.with_suffix(".log")
    with _native_stderr(log):
        failed = module.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    lines = log.read_text(errors="replace").splitlines()
    log.unlink()
    if failed:
        raise ConfigError(f"llama.cpp's quantizer failed to write {quant} from {source.name}: "
                          f"{lines[-1] if lines else 'no message'}")
    said = {}
    for line in lines:
        if "quant size" in line:
            said["size"] = line.split("=", 1)[1].strip()
        elif "required fallback quantization" in line:
            said["fallback"] = line.split("WARNING:", 1)[-1].strip()
    return said


def export_gguf(run_path: str | Path, out: str | Path, quant: str = "q4_k_m") -> Path:
    """OUT/<run>-<quant>.gguf, OUT/Modelfile and OUT/tunesmith_export.json, whole or not at all."""
    if quant not in QUANTS:
        raise ConfigError(f"--quant {quant}: choose {', '.join(QUANTS)}.")
    llama_cpp()  # before any work: a missing extra is named first
    run, recipe = checked_run(run_path)
    name = f"{recipe.output.run_name or recipe.name}-{quant}.gguf"
    with new_directory(out) as staging:
        merged = export_merged(run.root, staging / "merged", dtype="float32")
        f16 = staging / (name if quant == "f16" else "f16.gguf")
        convert(merged, f16, recipe.name)
        quantized = {}
        if quant != "f16":
            quantized = quantize(f16, staging / name, quant)
            f16.unlink()
        (staging / "Modelfile").write_text(modelfile(merged, name, recipe), encoding="utf-8")
        shutil.rmtree(merged)
        (staging / MANIFEST).write_text(manifest(run, recipe, format="gguf", quant=quant, file=name,
                                                 llama_cpp_python=llama_cpp().__version__,
                                                 quantizer=quantized))
    return Path(out) / name


def gguf_file(export: Path) -> Path:
    """The GGUF of an export directory (or the file itself)."""
    if export.is_file():
        return export
    manifest = export / MANIFEST
    if manifest.is_file() and "file" in json.loads(manifest.read_text()):
        return export / json.loads(manifest.read_text())["file"]
    found = sorted(export.glob("*.gguf"))
    if not found:
        raise ConfigError(f"{export}: no .gguf file. Export one first: "
                          f"tunesmith export RUN {export} --format gguf")
    return found[0]


def check_gguf(run_path: str | Path, export: str | Path, limit: int = 30) -> Agreement:
    """The GGUF in llama.cpp (llama-cpp-python, its own chat template from the file's metadata,
    greedy, eval.max_new_tokens), answering the run's first `limit` test prompts."""
    module = llama_cpp()
    run, recipe = checked_run(run_path)
    path = gguf_file(Path(export))
    context = context_length(recipe)
    model = module.Llama(model_path=str(path), n_ctx=context, n_threads=os.cpu_count() or 1, seed=0,
                         verbose=False)

    def answer(prompt: list[dict[str, Any]]) -> str:
        reply = model.create_chat_completion(messages=prompt, temperature=0.0, top_k=1,
                                             max_tokens=recipe.eval.max_new_tokens)
        return reply["choices"][0]["message"]["content"] or ""

    manifest_path = path.parent / MANIFEST
    quant = json.loads(manifest_path.read_text()).get("quant") if manifest_path.is_file() else None
    return agreement(run, recipe, answer, quant or "gguf", limit)
