"""QLoRA (train.method: qlora) on the CPU: bitsandbytes 0.50 runs NF4 forward and backward there.
The tiny Llama trains with its linear layers in 4-bit; evaluation, serving and the export put the
adapter on the same base dequantized, and all three answer as the adapter on the 4-bit base did."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("bitsandbytes")

import torch  # noqa: E402

from tunesmith import pipeline  # noqa: E402
from tunesmith.artifacts import Prediction, TrainSummary, load, load_rows  # noqa: E402
from tunesmith.models.loading import dequantized, load_model, load_run_model, load_tokenizer  # noqa: E402
from tunesmith.recipe import load_recipe  # noqa: E402
from tunesmith.rundir import open_run  # noqa: E402


def qlora_recipe(tmp_path, model_dir, files, *extra):
    return load_recipe(None, [
        f"model.name={model_dir}", f"data.train={files['train']}", f"data.test={files['test']}",
        f"output.dir={tmp_path / 'runs'}", "name=q", "train.method=qlora", "train.batch_size=4",
        "train.lr=0.01", "train.max_steps=30", "train.logging_steps=2", "eval.max_new_tokens=4",
        "eval.forgetting_probe=false", "eval.bias.enabled=false", "data.val_fraction=0.125", *extra])


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny_model_dir):
    """A QLoRA run of the tiny Llama, trained, merged and evaluated."""
    tmp = tmp_path_factory.mktemp("qlora")
    colours = ["red", "blue", "green", "black", "white", "pink"]
    files = {}
    for name, rows in (("train", [{"instruction": f"code for {c} #{i}", "output": c[:2].upper()}
                                  for i in range(8) for c in colours]),
                       ("test", [{"instruction": f"code for {c} now", "output": c[:2].upper()}
                                 for c in colours])):
        files[name] = tmp / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = qlora_recipe(tmp, tiny_model_dir, files, "train.merge=true")
    pipeline.prepare(recipe)
    result = pipeline.fine_tune(recipe)
    pipeline.evaluate_run(recipe)
    return recipe, open_run(recipe), result, tmp


def test_the_base_loads_in_nf4_with_double_quantization(tiny_model_dir):
    from bitsandbytes.nn import Linear4bit

    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", "train.method=qlora"])
    model = load_model(recipe.model, str(tiny_model_dir), "cpu", quantize=torch.float32)
    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, Linear4bit) for m in linears)  # every linear of the blocks
    assert linears[0].weight.quant_type == "nf4" and linears[0].weight.quant_state.nested  # double quant
    assert model.lm_head.weight.dtype == torch.float32 and not isinstance(model.lm_head, Linear4bit)
    full = load_model(recipe.model, str(tiny_model_dir), "cpu")
    # dequantized, the 4-bit base is the full base up to NF4's rounding (blocks of 64)
    back = dequantized(model, torch.float32)
    q, f = back.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight
    assert q.dtype == torch.float32 and not torch.equal(q, f)
    assert (q - f).abs().max() <= f.abs().max() * 0.2
    assert not hasattr(back.config, "quantization_config")


def test_qlora_trains_the_adapter_only(qlora_run, tiny_model_dir):
    recipe, run_dir, result, _ = qlora_run
    summary = load(TrainSummary, run_dir.train_summary)
    assert summary.method == "qlora" and result.steps == 30
    assert summary.train_loss is not None and summary.train_loss == summary.train_loss  # not NaN
    from safetensors.torch import load_file

    adapter = load_file(run_dir.model / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    config = json.loads((run_dir.model / "adapter_config.json").read_text())
    adapted = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (run_dir.merged_model / "config.json").exists()
    assert "quantization_config" not in json.loads((run_dir.merged_model / "config.json").read_text())


def test_dequantized_merged_and_4bit_answer_alike(qlora_run):
    """The adapter on the 4-bit base (as trained), on the dequantized base (evaluation, serving)
    and merged into it (the export, train.merge): the same logits to float precision, so the same
    greedy answers."""
    from peft import PeftModel

    recipe, run_dir, _, _ = qlora_run
    tokenizer = load_tokenizer(recipe.model, str(run_dir.model))
    ids = tokenizer("code for red now", return_tensors="pt")["input_ids"]
    four_bit = PeftModel.from_pretrained(load_model(recipe.model, None, "cpu", quantize=torch.float32),
                                         str(run_dir.model)).eval()
    served = load_run_model(recipe.model, "qlora", run_dir.model)
    with torch.inference_mode():
        trained = four_bit(ids).logits
        evaluated = served.model(ids).logits
        merged = served.model.merge_and_unload()(ids).logits
    assert torch.allclose(trained, evaluated, atol=1e-4)
    assert torch.allclose(trained, merged, atol=1e-4)
    with torch.inference_mode(), four_bit.disable_adapter():
        base = four_bit(ids).logits
    assert not torch.allclose(trained, base, atol=1e-3)  # the adapter counts


def test_qlora_evaluates_serves_and_exports(qlora_run):
    from fastapi.testclient import TestClient

    from tunesmith.export.merged import check_export, export_merged
    from tunesmith.serve.app import create_app

    recipe, run_dir, _, tmp = qlora_run
    tested = [p for p in load_rows(Prediction, run_dir.eval / "predictions.jsonl") if p.set == "test"]
    assert len(tested) == 6
    exported = export_merged(run_dir.root, tmp / "export", dtype="float32")
    assert json.loads((exported / "tunesmith_export.json").read_text())["adapter_merged"] is True
    assert check_export(run_dir.root, exported).same == len(tested)  # answers as evaluated
    from tunesmith.serve.state import load_served

    with TestClient(create_app(lambda: load_served(str(run_dir.root), with_fallback=False))) as client:
        answer = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": tested[0].prompt}], "max_tokens": 4, "temperature": 0})
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"].strip() == tested[0].finetuned_prediction.strip()


def test_the_cli_exports_a_qlora_run_and_checks_it(qlora_run):
    import subprocess
    import sys

    _, run_dir, _, tmp = qlora_run
    command = [sys.executable, "-m", "tunesmith", "export", str(run_dir.root), str(tmp / "cli-export"),
               "--dtype", "float32", "--check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "export check: 6 of 6 test answers" in done.stdout
