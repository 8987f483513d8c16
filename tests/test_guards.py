"""Overfitting guards: early stopping, the gap alarm, the L1 penalty, model dropout."""

from conftest import write_jsonl
from tunesmith import data, train
from tunesmith.models.loading import load_model
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run


def conflicting_files(tmp_path):
    """Validation answers contradict training answers, so fitting train makes val loss rise."""
    prompts = [f"item {i} colour" for i in range(16)]
    train_rows = [{"prompt": p, "completion": "XQXQ"} for p in prompts]
    val_rows = [{"prompt": p, "completion": "ZWZW"} for p in prompts[:6]]
    return write_jsonl(tmp_path / "t.jsonl", train_rows), write_jsonl(tmp_path / "v.jsonl", val_rows)


def recipe_for(tmp_path, model_dir, *extra):
    train_file, val_file = conflicting_files(tmp_path)
    return load_recipe(None, [
        f"model.name={model_dir}", f"data.train={train_file}", f"data.val={val_file}",
        f"output.dir={tmp_path / 'runs'}", "train.lr=0.02", "train.batch_size=4", "train.max_steps=60",
        "train.eval_steps=4", "train.logging_steps=2", "train.save_steps=1000", "data.dedup.near=false",
        "data.leakage.action=flag", "train.warmup_ratio=0", *extra])


def test_early_stopping_stops_a_run_whose_validation_loss_rises(tmp_path, tiny_model_dir):
    recipe = recipe_for(tmp_path, tiny_model_dir, "train.early_stopping.patience=2",
                        "train.max_val_train_gap=0.05")
    run_dir = open_run(recipe)
    data.run(recipe, run_dir)
    result = train.run(recipe, run_dir)
    assert result.steps < 60
    kinds = [e.guard for e in result.guards]
    assert kinds[-1] == "early_stopping" and "gap_alarm" in kinds
    assert "has not improved" in result.guards[-1].message


def test_without_patience_the_run_goes_on(tmp_path, tiny_model_dir):
    recipe = recipe_for(tmp_path, tiny_model_dir, "train.max_steps=12")
    run_dir = open_run(recipe)
    data.run(recipe, run_dir)
    assert train.run(recipe, run_dir).steps == 12


def test_l1_penalty_shrinks_the_adapter(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    norms = {}
    for l1 in (0.0, 0.05):
        (tmp_path / str(l1)).mkdir()
        recipe = recipe_for(tmp_path / str(l1), tiny_model_dir, f"train.l1={l1}", "train.max_steps=10",
                            f"output.run_name=l1-{l1}")
        run_dir = open_run(recipe)
        data.run(recipe, run_dir)
        train.run(recipe, run_dir)
        weights = load_file(run_dir.model / "adapter_model.safetensors")
        norms[l1] = sum(float(t.abs().sum()) for t in weights.values())
    assert norms[0.05] < norms[0.0]


def test_model_dropout_reaches_the_config(tiny_model_dir):
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}"])
    model = load_model(recipe.model, dropout=0.3)
    assert model.config.attention_dropout == 0.3


def test_auto_precision_follows_the_cpu(monkeypatch):
    """bf16 autocast only where the CPU computes bf16 natively (emulated, it is slower than fp32)."""
    from tunesmith.models.device import cpu_native_bf16, mixed_precision
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_native_bf16() and mixed_precision(recipe, "cpu") == "no"
    assert mixed_precision(load_recipe(None, ["train.mixed_precision=bf16"]), "cpu") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    native = cpu_native_bf16()
    assert mixed_precision(recipe, "cpu") == ("bf16" if native else "no")
    assert mixed_precision(recipe, "mps") == "no"
