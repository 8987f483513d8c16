"""Where users run and share a model: `tunesmith export --format gguf` (llama.cpp's own converter
and quantizer, an Ollama Modelfile, `--check` in llama.cpp) and `tunesmith push` (huggingface_hub
against a fake Hub on loopback, the card through the hub library's own parser).

The GGUF run is a tiny Llama with SmolLM2's real tokenizer (tiny_smol_dir), trained until it
answers the colour codes, then evaluated: llama.cpp's converter needs a tokenizer it knows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import colour_codes
from fake_hub import FakeHub
from tunesmith import pipeline
from tunesmith.errors import ConfigError
from tunesmith.files import read_jsonl
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run

SYSTEM = "Answer with the code."


def tunesmith(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory, tiny_smol_dir):
    root = tmp_path_factory.mktemp("gguf")
    files = colour_codes(root)
    recipe = load_recipe(None, [f"model.name={tiny_smol_dir}", f"data.train={files['train']}",
                                f"data.test={files['test']}", f"data.system_prompt={SYSTEM}",
                                # full weights: LoRA on a 64-wide random model with a 49k vocabulary
                                # does not learn the codes in a test's budget; this does (6 of 6)
                                "train.method=full", "train.max_steps=200", "train.lr=0.005",
                                "train.batch_size=4",
                                "eval.max_new_tokens=4", "eval.forgetting_probe=false",
                                "eval.bias.enabled=false", f"output.dir={root / 'runs'}", "name=smol"])
    pipeline.run(recipe)
    return recipe, open_run(recipe), root


def test_gguf_export_answers_as_evaluated_and_its_modelfile_matches_its_template(smol_run):
    from gguf import GGUFReader
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    recipe, run, root = smol_run
    tested = [p for p in read_jsonl(run.eval / "predictions.jsonl") if p["set"] == "test"]
    assert sum(p["finetuned_score"] for p in tested) >= 4  # it learnt the task: answers with margins
    done = tunesmith("export", str(run.root), str(root / "f16"), "--format", "gguf", "--quant", "f16",
                     "--check")
    assert done.returncode == 0, done.stderr[-2000:]
    gguf = root / "f16" / "smol-f16.gguf"
    assert gguf.is_file() and f"gguf: {gguf}" in done.stdout
    # f16 of a model evaluated in fp32: every answer the same
    assert f"export check: {len(tested)} of {len(tested)} test answers (100.0%)" in done.stdout
    assert "in llama.cpp with the GGUF's own chat template (f16)" in done.stdout

    fields = GGUFReader(str(gguf)).fields
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert SYSTEM in template  # the run's system prompt travels in the file's own template

    # the Modelfile names the file beside it, and its Go template lays a conversation out as the
    # GGUF's Jinja template does (ChatML, rendered by hand here), with the run's system prompt
    modelfile = (root / "f16" / "Modelfile").read_text()
    assert "FROM ./smol-f16.gguf\n" in modelfile and f'SYSTEM """{SYSTEM}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0" in modelfile
    assert f"PARAMETER num_predict {recipe.eval.max_new_tokens}" in modelfile
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}" in modelfile
    by_hand = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\ncode for red now<|im_end|>\n"
               "<|im_start|>assistant\n")
    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    formatter = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|im_start|>")
    assert formatter(messages=[{"role": "user", "content": "code for red now"}]).prompt == by_hand
    assert vocab.metadata["general.name"] == "smol"


def test_quantized_gguf_states_its_agreement_and_metric(smol_run):
    recipe, run, root = smol_run
    done = tunesmith("export", str(run.root), str(root / "q4"), "--format", "gguf", "--check")  # q4_k_m
    assert done.returncode == 0, done.stderr[-2000:]
    assert (root / "q4" / "smol-q4_k_m.gguf").is_file()
    f16 = (root / "f16" / "smol-f16.gguf")
    if f16.is_file():  # a quarter of the bits: a smaller file
        assert (root / "q4" / "smol-q4_k_m.gguf").stat().st_size < f16.stat().st_size
    assert "export check: " in done.stdout and "(q4_k_m)" in done.stdout
    assert "exact_match on these prompts: export " in done.stdout
    again = tunesmith("export", str(run.root), str(root / "q4"), "--format", "gguf", "--check")  # only checks
    assert again.returncode == 0 and "gguf: " not in again.stdout and "export check: " in again.stdout


def test_a_tokenizer_llama_cpp_does_not_know_is_a_clear_error(tmp_path, tiny_model_dir, chat_files):
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={chat_files['train']}",
                                f"data.test={chat_files['test']}", "train.max_steps=1", "train.batch_size=4",
                                "eval.max_new_tokens=2", f"output.dir={tmp_path / 'runs'}", "name=chars"])
    pipeline.fine_tune(recipe)
    done = tunesmith("export", str(recipe.run_dir), str(tmp_path / "out"), "--format", "gguf",
                     "--quant", "f16")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "llama.cpp's converter could not convert this model" in " ".join(done.stderr.split())
    assert not (tmp_path / "out").exists()  # nothing half written


def test_a_missing_gguf_extra_is_named(monkeypatch):
    from tunesmith.export import gguf

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'tunesmith\[gguf\]'"):
        gguf.export_gguf("runs/none", "out")


def test_push_uploads_model_card_and_report_privately_with_the_token_from_the_environment(smol_run):
    recipe, run, root = smol_run
    with FakeHub() as hub:
        done = tunesmith("push", str(run.root), "acme/smol-tickets",
                         env={"HF_TOKEN": "hf_test_secret", "HF_ENDPOINT": hub.url})
        assert done.returncode == 0, done.stderr[-2000:]
        repo = hub.repos["acme/smol-tickets"]
        assert repo["visibility"] == "private" and hub.validated == 1
        assert {"README.md", "report.html", "eval_summary.json", "recipe.yaml", "model.safetensors",
                "config.json", "tokenizer.json"} <= set(repo["files"])
        assert repo["files"]["README.md"] == (run.root / "README.md").read_bytes()
        repo_calls = ("/api/repos/", "/api/models/", "/api/validate")
        sent = [r for r in hub.requests if r["path"].startswith(repo_calls)]
        assert len(sent) >= 4 and {r["authorization"] for r in sent} == {"Bearer hf_test_secret"}
        assert "hf_test_secret" not in done.stdout + done.stderr  # the token is never printed
        assert "pushed" in done.stdout and "(private)" in done.stdout

        no_token = tunesmith("push", str(run.root), "acme/x", env={"HF_TOKEN": "", "HF_ENDPOINT": hub.url})
        assert no_token.returncode == 2 and "HF_TOKEN is not set" in no_token.stderr
        bad_id = tunesmith("push", str(run.root), "not a repo", env={"HF_TOKEN": "t", "HF_ENDPOINT": hub.url})
        assert bad_id.returncode == 2 and "write it as org/name" in bad_id.stderr


def test_the_run_card_passes_the_hub_librarys_own_parser(smol_run):
    from huggingface_hub import ModelCard

    from tunesmith.export.hub import validate_card

    recipe, run, root = smol_run
    text = (run.root / "README.md").read_text()
    data = validate_card(text, "README.md")
    assert data["model-index"][0]["results"]  # the evaluation's scores, as the Hub reads them
    results = ModelCard(text, ignore_metadata_errors=False).data.eval_results
    assert results and all(r.metric_value is not None for r in results)
    broken = text.replace("model-index:", "model-index: [", 1)
    with pytest.raises(ConfigError, match="not valid for the Hub"):
        validate_card(broken, "README.md")


def test_push_merged_uploads_the_merged_export_of_a_lora_run(tmp_path, tiny_model_dir, chat_files):
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={chat_files['train']}",
                                f"data.test={chat_files['test']}", "train.max_steps=2", "train.batch_size=4",
                                "eval.max_new_tokens=2", f"output.dir={tmp_path / 'runs'}", "name=lora"])
    pipeline.run(recipe)
    with FakeHub() as hub:
        done = tunesmith("push", str(recipe.run_dir), "acme/merged", "--merged",
                         env={"HF_TOKEN": "hf_test_secret", "HF_ENDPOINT": hub.url})
        assert done.returncode == 0, done.stderr[-2000:]
        files = set(hub.repos["acme/merged"]["files"])
    assert {"model.safetensors", "generation_config.json", "tunesmith_export.json", "README.md"} <= files
    assert not any(name.startswith("adapter_") for name in files)  # merged: no adapter beside it
